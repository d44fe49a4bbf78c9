"""Atomic file writes: a temp file in the destination folder, then ``os.replace``.

An interrupted write (Ctrl-C, an exception, a full disk) removes the temp file, so the destination
either keeps its old content or does not exist: never a half-written image. Also the checks that a
command runs before its work, so that an unwritable destination fails in the first second, not
after minutes: :func:`check_writable` (a file) and :func:`ensure_output_dir` (a folder).
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


def check_writable(path: Path, what: str) -> None:
    """Raise CmddError unless a file can be created at ``path``: its nearest existing folder must
    take a (deleted at once) temporary file. Creates nothing that stays; missing folders are made
    only when the file is written."""
    from .errors import CmddError

    path = Path(path)
    if path.is_dir():
        raise CmddError(f"{path}: the {what} is a folder")
    parent = path.parent.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CmddError(f"{path}: cannot write the {what} there ({parent} is a file)")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise CmddError(f"{path}: cannot write the {what} there ({e.strerror or e})") from e


def ensure_output_dir(out_dir: Path, option: str = "-o") -> None:
    """Create the output folder ``out_dir`` (given as ``option``) and make sure it is writable, before
    any work. Raises CmddError (one line) if it is a file, cannot be created or is read-only."""
    from .errors import CmddError

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CmddError(f"{out_dir}: {option} must be a folder (this is a file)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CmddError(f"{out_dir}: cannot create the output folder ({e.strerror or e})") from e
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise CmddError(f"{out_dir}: the output folder is not writable")
