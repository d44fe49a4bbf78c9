"""Process memory from /proc/self/status, shared by the benchmark scripts."""

from __future__ import annotations


def proc_status(key: str) -> int | None:
    """A size field of /proc/self/status (VmRSS, VmHWM, ...) in bytes (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
