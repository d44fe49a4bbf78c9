"""Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's, CI's or ``kill``'s stop).

The first signal only sets a :class:`~cmddcli.signals.StopRequest` (:func:`cmddcli.signals.stop_on_signals`);
the loop finishes its step, every rank agrees on the stop (:func:`agreed_stop`), a checkpoint of that step is written and the run returns with
``stopped_by`` set (the CLI exits 128 + the signal's number). A second SIGINT raises
KeyboardInterrupt at once; a second SIGTERM ends the process by SIGTERM. Under DDP without torchrun a
second signal on one rank can leave the others waiting in a collective until the process group's
timeout.

Data-loader workers must not die of a signal meant for the run: a terminal sends Ctrl-C, and
``kill -- -PGID`` or a scheduler SIGTERM, to the whole process group, and a worker killed that way
makes the main process fail before it can write the checkpoint. Workers therefore leave the process
group first thing (:func:`loader_worker_init`), and the main process blocks both signals while it
starts them (:func:`signals_blocked`), so none lands in between. Signals sent to each process by
name reach the workers too (``pkill -f "cmdd train"``, ``killall``: a worker has the run's command
line), so workers ignore SIGINT and SIGTERM altogether; torch ends them itself (a stop message; its
SIGTERM fallback for a hung worker is then ignored, see below). On Linux a worker is killed with its
parent (``PR_SET_PDEATHSIG``), so none outlives the run, not even after a second SIGTERM ("stop at
once") or a SIGKILL; elsewhere torch's worker watchdog ends them within seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Optional

from ..runtime import DistInfo, max_over_ranks
from ..signals import STOP_SIGNALS, StopRequest

__all__ = ["agreed_stop", "signals_blocked", "loader_worker_init"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def agreed_stop(req: StopRequest, info: DistInfo) -> Optional[str]:
    """The stop signal's name if any rank received one (the same on every rank), else None.
    Collective under DDP: every rank calls it once per step."""
    signum = int(max_over_ranks(float(req.signum), info))
    return signal.Signals(signum).name if signum else None


@contextlib.contextmanager
def signals_blocked():
    """Hold SIGINT / SIGTERM back in this thread while data-loader workers are forked (they inherit
    the mask and clear it in :func:`loader_worker_init`); a signal that arrives meanwhile is delivered
    when the block ends. A no-op where the platform has no ``pthread_sigmask``."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent exits (``prctl(PR_SET_PDEATHSIG)``,
    man 2 prctl); exit now if the parent is already gone. Elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # no libc prctl (e.g. a static or unusual runtime)
        return
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(1)


def loader_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of the training data loaders: leave the run's process group (signals sent
    to it are for the main process, which stops the workers itself), ignore SIGINT and SIGTERM (also
    when sent by name, e.g. ``pkill -f``), die with the parent (Linux), drop a stop signal sent while
    the worker was starting, then unblock them."""
    if hasattr(os, "setpgid"):
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    _die_with_parent()
    if hasattr(signal, "sigtimedwait"):  # not on macOS
        while signal.sigtimedwait(STOP_SIGNALS, 0) is not None:  # pending from before setpgid: not ours
            pass
    if hasattr(signal, "pthread_sigmask"):  # blocked by signals_blocked() in the parent
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
