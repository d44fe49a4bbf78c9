"""Stopping on SIGINT (Ctrl-C) or SIGTERM (a scheduler's, CI's or ``kill``'s stop): one helper for
``cmdd deblur`` and ``cmdd train``.

* ``at_once=True`` (deblur): either signal raises KeyboardInterrupt where the program is, as Ctrl-C
  does; the batch keeps the outputs finished so far (each is written atomically).
* ``at_once=False`` (train): the first signal only sets the :class:`StopRequest`, so the loop can
  finish its step and write a checkpoint; a second SIGINT raises KeyboardInterrupt at once, a second
  SIGTERM ends the process by SIGTERM.

Either way ``StopRequest.signum`` says which signal came first, for the exit code (128 + its number).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

__all__ = ["STOP_SIGNALS", "StopRequest", "stop_on_signals"]

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by :func:`stop_on_signals`: ``signum`` is the first stop signal's number (0: none yet)."""

    def __init__(self) -> None:
        self.signum = 0


@contextlib.contextmanager
def stop_on_signals(at_once: bool = False, message: str = "stopping"):
    """Within the block, SIGINT and SIGTERM are handled as the module says; yields the :class:`StopRequest`.

    Installed only in the main thread (the only one Python delivers signals to), and not over a
    signal that is ignored (e.g. SIGINT of a job started in the background by a script) or handled
    outside Python; the previous handlers are restored on exit. ``message`` is logged (as a warning,
    after the signal's name) when the first signal only sets the request.
    """
    req = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield req
        return
    old = {}
    for s in STOP_SIGNALS:
        h = signal.getsignal(s)
        if h is not signal.SIG_IGN and h is not None:
            old[s] = h

    def handler(signum, frame):
        if at_once:
            req.signum = req.signum or signum
            raise KeyboardInterrupt
        if req.signum:
            if signum == signal.SIGTERM:  # stop at once, as SIGTERM would have without us
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt
        req.signum = signum
        log.warning("%s: %s", signal.Signals(signum).name, message)

    try:
        for s in old:
            signal.signal(s, handler)
        yield req
    finally:
        for s, h in old.items():
            signal.signal(s, h)
