"""What `cmdd deblur` takes as inputs: walking folders, expanding globs, and leaving out the outputs
of earlier runs.

* Inputs are files, folders (``recursive`` walks sub-folders) and glob patterns. Folders and globs
  pick up files with a supported extension (hidden files and folders are skipped, and so is the
  output folder when it lies inside an input folder); a file named explicitly is always tried.
  Symlinked folders are followed, each real folder walked once (a loop is skipped with a warning).
* A glob's literal file extension matches in any case (``shoot/*.NEF`` also finds ``a.nef``).
* A file that has a resume record (:mod:`.resume`) in the output folder, or in another output folder
  inside a walked folder, is an output of an earlier run: a folder walk or glob does not take it as
  an input (a file named on its own is always an input).
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
             exclude: Optional[Path] = None, warn: bool = True) -> list[tuple[Path, Path]]:
    """(file, root) pairs for the inputs, sorted by file path, duplicates removed.

    ``root`` is what the output tree mirrors from: the folder argument, the fixed part of a glob,
    or the file's own folder for a file named on its own. ``exclude`` is the output folder: when it
    lies inside a walked folder or below a glob's fixed part, the files in it are left out; and
    any file ``exclude`` holds a resume record for (an output of an earlier run, unchanged since)
    is left out wherever it was found, so an output folder that is also the input folder can be
    deblurred into again. A missing path is returned as is (it fails later with "file not found").
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
    pairs = [(f, root) for f, root in pairs if not _recorded_output(f, out_dirs)]
    has_records: dict = {}
    pairs = [(f, root) for f, root in pairs if f in named or not _output_of_another_run(f, root, has_records)]
    seen, unique = set(), []
    for f, root in sorted(pairs, key=lambda fr: os.fspath(fr[0].absolute())):
        key = os.path.normcase(os.fspath(resolved(f)))
        if key not in seen:
            seen.add(key)
            unique.append((f, root))
    return unique


def _recorded_output(file: Path, out_dirs: Sequence[Path], hint: str = "use another -o to deblur it again") -> bool:
    """Whether ``file`` is an output of an earlier run into the output folder (``out_dirs``: its
    absolute and its resolved path): it has a resume record there and, where the record says, the
    same size and modification time as when it was written (a photo copied over it later is an
    input again)."""
    for base in out_dirs:
        for f in (file.absolute(), resolved(file)):
            try:
                rel = f.relative_to(base)
            except ValueError:
                continue
            rec = resume.recorded_output(file, base, rel)
            if rec is not None:
                log.info("%s: left out, an output of an earlier run (%s); %s", file, rec, hint)
                return True
    return False


def _output_of_another_run(file: Path, root: Path, has_records: dict) -> bool:
    """Whether ``file``, found by walking ``root`` (a folder or a glob's fixed part), is an output of
    an earlier run into another output folder inside ``root`` (``cmdd deblur shoot -r -o shoot/v1``,
    then ``-o shoot/v2``): some folder between the file and ``root`` holds a resume record of it.
    ``has_records`` caches which folders have records."""
    try:
        rel_parts = file.absolute().relative_to(root.absolute()).parts
    except ValueError:
        return False
    folder = root.absolute()
    for part in rel_parts[:-1]:
        folder = folder / part
        if folder not in has_records:
            has_records[folder] = resume.has_records(folder)
        if has_records[folder] and _recorded_output(file, (folder, resolved(folder)),
                                                    "name the file on its own to deblur it again"):
            return True
    return False


def has_subfolders(folder: Path, out_dir: Path) -> bool:
    """Whether ``folder`` has a sub-folder that ``--recursive`` would walk (not hidden, not the output)."""
    try:
        return folder.is_dir() and any(d.is_dir() and not _is_hidden(d.name) and d.resolve() != out_dir.resolve()
                                       for d in folder.iterdir())
    except OSError:
        return False
