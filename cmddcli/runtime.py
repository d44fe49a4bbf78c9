"""Process-level settings for running the network on this machine.

:func:`tune_cpu_allocator` -- why it exists: glibc's ``malloc`` serves every block above its mmap
threshold (at most 32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` on ``free``. A
CMDDNet forward allocates dozens of such activations, so each one is paid for again in page faults
when it is first written (one fault per 4 KiB page, zero-filled by the kernel). Measured on the
2-core development machine (benchmarks/RESULTS.md): copying a 32 MiB tensor into a fresh tensor
takes ~10 ms, into a reused one 1.5 ms; the whole `small` forward at 512² runs 1.4-1.5x faster with
the tuning. ``mallopt(M_MMAP_MAX, 0)`` keeps large blocks on the heap and a high
``M_TRIM_THRESHOLD`` keeps freed heap memory in the process, so the next forward reuses pages that
are already mapped. Peak resident memory is unchanged (it is the high-water mark either way).
Set ``CMDD_MALLOC_TUNING=0`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_state = {"tuned": None}


def tune_cpu_allocator() -> bool:
    """Keep large CPU allocations on glibc's heap and never trim it (see the module docstring).

    Idempotent and process-wide. Returns True when the tuning is in effect; False on other C
    libraries (musl, macOS, Windows) or when ``CMDD_MALLOC_TUNING=0``. Never raises."""
    if _state["tuned"] is not None:
        return _state["tuned"]
    ok = False
    if os.environ.get("CMDD_MALLOC_TUNING", "1") != "0" and platform.system() == "Linux":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
            mallopt(_M_TOP_PAD, 64 << 20)  # grow the heap in 64 MiB steps
        except (OSError, AttributeError) as e:  # not glibc
            log.debug("malloc tuning unavailable: %s", e)
            ok = False
    _state["tuned"] = ok
    log.debug("glibc malloc tuning %s", "on" if ok else "off")
    return ok
