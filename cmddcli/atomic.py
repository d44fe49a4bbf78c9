"""Atomic file writes: a temp file in the destination folder, then ``os.replace``.

An interrupted write (Ctrl-C, an exception, a full disk) removes the temp file, so the destination
either keeps its old content or does not exist: never a half-written image.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

TEMP_PREFIX = ".cmdd-"
TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``dest``; on success it replaces ``dest``, on failure it is removed.

    The temp name keeps ``dest``'s suffix before ``.tmp`` (``.cmdd-XXXX.png.tmp``) so tools that look
    at extensions still can, and starts with a dot so folder scans skip it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=dest.suffix + TEMP_SUFFIX, dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(dest: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``dest`` atomically; ``fsync=False`` skips flushing it to the disk first
    (for many small files that a resumed run checks anyway, such as training crops)."""
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
