"""What `cmdd deblur` takes as inputs: walking folders, expanding globs, and leaving out the outputs
of earlier runs.

* Inputs are files, folders (``recursive`` walks sub-folders) and glob patterns. Folders and globs
  pick up files with a supported extension (hidden files and folders are skipped, and so is the
  output folder when it lies inside an input folder); a file named explicitly is always tried.
  Symlinked folders are followed, each real folder walked once (a loop is skipped with a warning).
* A glob's literal file extension matches in any case (``shoot/*.NEF`` also finds ``a.nef``).
* Anything cmdd wrote (an output or a blur map / restore mask beside it, as the resume records of
  :mod:`.resume` list them, with the content they were written with) is never taken as an input by a
  folder walk or glob, wherever it sits: records in any ``.cmdd/records`` of a folder at or above the
  file count (the output folder, a walked folder that was an output folder, an output folder inside
  it). A file named on its own is an input unless the output folder itself records it.
* The same file reached twice (a symlink named beside its target) is taken once; a named one that is
  left out is reported through ``dropped`` so it still gets a row.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from ..photo import is_supported
from . import resume

log = logging.getLogger(__name__)

_MAGIC = set("*?[")

# Image files a folder walk leaves out (GIF animations, BMP, HEIC, AVIF, ...): counted in one line.
_OTHER_IMAGE_EXTENSIONS = frozenset({".gif", ".bmp", ".heic", ".heif", ".avif", ".jxl", ".psd", ".exr"})


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def resolved(path: Path) -> Path:
    """``path.resolve()``, or its absolute path when it cannot be resolved (a symlink loop raises
    RuntimeError before Python 3.13, OSError after): such a file then fails on its own when opened."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _walk(folder: Path, recursive: bool, exclude: Optional[Path]) -> list[Path]:
    """Supported files in ``folder`` (and below when ``recursive``), following symlinked folders but
    walking each real folder once, so a symlink loop ends with a warning instead of never."""
    found = []
    walked: set = set()
    other: dict = {}  # extension -> count of image files of other kinds, named in one info line

    def unreadable(e: OSError) -> None:  # a folder without permission: said, not skipped silently
        log.warning("%s: cannot be read (%s); skipped", e.filename, e.strerror or e)

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=unreadable):
        here = Path(dirpath)
        try:
            st = os.stat(here)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in walked:
            log.warning("%s: skipped, that folder was already walked (a symlink loop or a second link to it)", here)
            dirnames[:] = []
            continue
        walked.add((st.st_dev, st.st_ino))
        subdirs = sorted(d for d in dirnames
                         if not _is_hidden(d) and not (exclude is not None and resolved(here / d) == exclude))
        if subdirs and not recursive:
            log.info("%s: %d sub-folder(s) not searched (use --recursive)", here, len(subdirs))
        dirnames[:] = subdirs if recursive else []
        for f in sorted(filenames):
            if _is_hidden(f):
                continue
            if is_supported(f):
                found.append(here / f)
            elif (ext := Path(f).suffix.lower()) in _OTHER_IMAGE_EXTENSIONS:
                other[ext] = other.get(ext, 0) + 1
    if other:
        log.info("%s: %s not picked up from folders (name such a file on its own to deblur it)", folder,
                 ", ".join(f"{n} {ext}" for ext, n in sorted(other.items())))
    return found


def _any_case_extension(pattern: str) -> str:
    """A glob whose literal file extension matches in any case (``shoot/*.NEF`` also finds ``a.nef``:
    cameras write upper case, copies and converters often lower)."""
    head, sep, ext = pattern.rpartition(".")
    if not sep or not ext or not ext.isalnum() or "/" in ext or os.sep in ext:
        return pattern
    return head + "." + "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext)


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    root = []
    for p in parts:
        if _MAGIC & set(p):
            break
        root.append(p)
    return Path(*root) if root else Path(".")


def discover(inputs: Sequence[str | os.PathLike], recursive: bool = False,
             exclude: Optional[Path] = None, warn: bool = True,
             dropped: Optional[list] = None) -> list[tuple[Path, Path]]:
    """(file, root) pairs for the inputs, sorted by file path, duplicates removed.

    ``root`` is what the output tree mirrors from: the folder argument, the fixed part of a glob,
    or the file's own folder for a file named on its own. ``exclude`` is the output folder: when it
    lies inside a walked folder or below a glob's fixed part, the files in it are left out; and
    any file an earlier run wrote (an output or side file a resume record lists, unchanged since:
    see the module) is left out, so an output folder that is also the input folder can be deblurred
    into again. A missing path is returned as is (it fails later with "file not found"). A file
    named on its own that is the same file as another input is appended to ``dropped`` (when given)
    as ``(file, reason)``.
    With several inputs and ``warn``, a folder or glob that holds no image is named in a warning.
    """
    out_dirs = (Path(exclude).absolute(), Path(exclude).resolve()) if exclude is not None else ()
    exclude = Path(exclude).resolve() if exclude is not None else None
    pairs: list[tuple[Path, Path]] = []
    named: set = set()  # files named on their own: always inputs
    for arg in inputs:
        before = len(pairs)
        s = os.fspath(arg)
        p = Path(s).expanduser()
        try:
            is_dir, exists = p.is_dir(), p.exists()
        except OSError:  # a name too long, a folder without permission: fails later, with the reason
            is_dir, exists = False, True
        if is_dir:
            walk_exclude = exclude if exclude is not None and _within(exclude, p.resolve()) else None
            pairs += [(f, p) for f in _walk(p, recursive, walk_exclude)]
        elif exists or not (_MAGIC & set(s)):
            pairs.append((p, p.parent))
            named.add(p)
        else:
            root = _glob_root(s)
            skip_out = exclude is not None and exclude != root.resolve() and _within(exclude, root.resolve())
            for m in sorted(glob.glob(_any_case_extension(s), recursive=recursive or "**" in s)):
                f = Path(m)
                if not f.is_file() or not is_supported(f) or any(_is_hidden(x) for x in f.relative_to(root).parts):
                    continue
                if skip_out and _within(resolved(f), exclude):
                    continue
                pairs.append((f, root))
        if warn and len(pairs) == before and len(inputs) > 1:  # one input: run_batch's error says it
            hint = " (use --recursive for sub-folders)" if is_dir and not recursive and \
                has_subfolders(p, Path(exclude) if exclude is not None else p) else ""
            log.warning("%s: no images found; skipped%s", s, hint)
    records = _Records()
    pairs = [(f, root) for f, root in pairs
             if not records.written(f, out_dirs if f in named else None,
                                    "use another -o to deblur it again" if f in named
                                    else "name the file on its own to deblur it again")]
    seen: dict = {}
    unique = []
    for f, root in sorted(pairs, key=lambda fr: os.fspath(fr[0].absolute())):
        key = os.path.normcase(os.fspath(resolved(f)))
        if key not in seen:
            seen[key] = f
            unique.append((f, root))
        elif f in named and dropped is not None:
            dropped.append((f, f"same file as {seen[key]}"))
    return unique


class _Records:
    """The files that earlier runs' resume records list, per output folder (read once per folder)."""

    def __init__(self) -> None:
        self.index: dict = {}  # folder -> resume.recorded_files(folder), or None: no records there

    def _files(self, folder: Path) -> Optional[dict]:
        if folder not in self.index:
            self.index[folder] = resume.recorded_files(folder) if resume.has_records(folder) else None
        return self.index[folder]

    def written(self, file: Path, folders: Optional[Sequence[Path]], hint: str) -> bool:
        """Whether ``file`` is a file cmdd wrote (unchanged since) as a record in one of ``folders``
        says (None: every folder at or above the file, as given and resolved)."""
        paths = (file.absolute(), resolved(file))
        if folders is None:
            folders = list(dict.fromkeys(d for p in paths for d in p.parents))
        for folder in folders:
            files = self._files(folder)
            if not files:
                continue
            for p in paths:
                key = os.path.normcase(os.fspath(p))
                if key in files and resume.is_recorded(file, files[key]):
                    log.info("%s: left out, written by an earlier cmdd run (recorded in %s); %s",
                             file, Path(folder) / resume.STATE_DIR / resume.RECORDS_DIR, hint)
                    return True
        return False


def has_subfolders(folder: Path, out_dir: Path) -> bool:
    """Whether ``folder`` has a sub-folder that ``--recursive`` would walk (not hidden, not the output)."""
    try:
        return folder.is_dir() and any(d.is_dir() and not _is_hidden(d.name) and d.resolve() != out_dir.resolve()
                                       for d in folder.iterdir())
    except OSError:
        return False
