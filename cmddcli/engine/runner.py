"""The file-batch runner behind `cmdd deblur`: find inputs, plan outputs, deblur, report.

* Inputs are files, folders (``recursive`` walks sub-folders) and glob patterns. Folders and globs
  pick up files with a supported extension (hidden files and folders are skipped, and so is the
  output folder when it lies inside an input folder); a file named explicitly is always tried.
  Symlinked folders are followed, each real folder walked once (a loop is skipped with a warning).
* Outputs mirror the input tree under ``out_dir``: a file found in folder ``F`` at ``F/a/b.jpg``
  goes to ``out_dir/a/b<suffix>.<ext>``; a file named on its own goes to ``out_dir/<name>``.
* An output that would be an input file is refused; two inputs that map to one output fail the
  second. Resume: each finished output gets a record, ``out_dir/.cmdd/records/<output>.json``, of
  the source file (resolved path, size, mtime) and the settings that made it (:func:`recipe`:
  weights digest, RAW development for RAW files, bit depth, precision, tile and overlap, ...). An
  existing output is skipped only when its record matches the input and the settings; with no
  record, or a record of another source, an older version of the source or other settings, the
  file fails with a reason saying which, so nothing is kept silently. ``overwrite`` redoes every
  output. Files with a record are outputs: a later walk of the same folder does not take them as
  inputs.
* Each output is written through a temp file and ``os.replace`` (see cmddcli.atomic).
* A file that cannot be used fails with a one-line reason and the batch goes on.
* Under ``torchrun`` (WORLD_SIZE / RANK / LOCAL_RANK), rank r takes files r, r + world, ... of the
  sorted list, and the per-rank reports are merged with ``all_gather_object`` over gloo.

A summary (``BatchReport.to_dict()``: settings, RAW development, one row per file) is written to
``out_dir/.cmdd/summary.json``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from .selective import RestoreOptions, finish_photo
from ..errors import CmddError, InputError
from ..runtime import DistInfo, gather_objects
from ..photo import MAX_PIXELS, RawSettings, default_output_suffix, is_raw, is_supported, read_photo, write_photo
from ..photo.io import check_readable
from ..atomic import atomic_write_bytes, ensure_output_dir

log = logging.getLogger(__name__)

STATE_DIR = ".cmdd"
SUMMARY_NAME = "summary.json"
RECORDS_DIR = "records"
_MAGIC = set("*?[")


# ---------------------------------------------------------------------------------------- types


@dataclass(frozen=True)
class Job:
    """One input file and where its output goes. ``error`` is set when planning already failed it."""

    input: Path
    output: Optional[Path]
    error: Optional[str] = None


@dataclass
class FileResult:
    """What happened to one input file: status (done / skipped / failed / planned), output, seconds, reason, warnings, rank."""
    input: str
    output: Optional[str]
    status: str  # "done" | "skipped" | "failed" | "planned"
    reason: str = ""
    seconds: float = 0.0
    width: int = 0
    height: int = 0
    rank: int = 0
    warnings: list = field(default_factory=list)  # what could not be kept (pages, range, metadata...)
    restore: dict = field(default_factory=dict)  # strength, restored region and share (RestoreOptions)
    raw: Optional[dict] = None  # RAW inputs: the development as applied (settings + half_size_applied)


@dataclass(frozen=True)
class BatchOptions:
    """How the runner names, writes and resumes outputs (output folder, format, suffix, bit depth, RAW
    development, size limit, restore options); one object for a whole run."""
    out_dir: Path
    recursive: bool = False
    ext: Optional[str] = None  # "png" / "tif" / "jpg" / "webp"; None: same as the input (RAW -> tif)
    suffix: str = ""
    overwrite: bool = False
    bit_depth: Optional[int] = None  # None: keep the input's
    raw: RawSettings = RawSettings()
    dry_run: bool = False
    max_pixels: Optional[int] = MAX_PIXELS  # decompression-bomb limit per file (None: none)
    recipe: dict = field(default_factory=dict)  # what else makes an output (e.g. the weights' digest)
    restore: RestoreOptions = RestoreOptions()  # strength, focus auto / mask, --save-blur-map
    report: bool = False  # write report previews (OUT/.cmdd/report) for cmddcli.engine.report

    def __post_init__(self):
        # The suffix is part of a file name: a path separator in it would put outputs (and, with "..",
        # overwrite unrelated files) outside out_dir.
        if any(c in self.suffix for c in ("/", "\\", "\0")):
            raise CmddError(f"--suffix {self.suffix!r}: must not contain '/', '\\' or NUL (it is appended to file names)")


@dataclass
class BatchReport:
    """Every file's :class:`FileResult`, the run's settings and world size; ``to_dict`` is the summary JSON."""
    results: list[FileResult]
    settings: dict = field(default_factory=dict)
    world_size: int = 1
    summary_error: Optional[str] = None  # why OUT/.cmdd/summary.json could not be written

    def counts(self) -> dict:
        c = {"done": 0, "skipped": 0, "failed": 0, "planned": 0}
        for r in self.results:
            c[r.status] = c.get(r.status, 0) + 1
        return c

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    def to_dict(self) -> dict:
        d = {
            "counts": self.counts(),
            "world_size": self.world_size,
            "settings": self.settings,
            "files": [asdict(r) for r in self.results],
        }
        if self.summary_error:
            d["summary_error"] = self.summary_error
        return d


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, which the CLI turns into it) during a batch: the outputs finished so far
    are complete and recorded, so rerunning the same command resumes. ``results``: every file's
    result so far (the files not reached are absent); ``left``: how many were still to be made."""

    def __init__(self, results: list, left: int):
        super().__init__(f"interrupted with {left} file(s) left")
        self.results, self.left = results, left


class BatchProgress:
    """Progress hooks (no-ops here; the CLI draws rich bars from them)."""

    def start(self, total_files: int) -> None: ...

    def file_started(self, job: Job) -> None: ...

    def tiles(self, done: int, total: int) -> None: ...

    def file_finished(self, result: FileResult) -> None: ...


# ---------------------------------------------------------------------------------------- discovery


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _resolved(path: Path) -> Path:
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
                         if not _is_hidden(d) and not (exclude is not None and _resolved(here / d) == exclude))
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


# Image files a folder walk leaves out (GIF animations, BMP, HEIC, AVIF, ...): counted in one line.
_OTHER_IMAGE_EXTENSIONS = frozenset({".gif", ".bmp", ".heic", ".heif", ".avif", ".jxl", ".psd", ".exr"})


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
                if skip_out and _within(_resolved(f), exclude):
                    continue
                pairs.append((f, root))
        if warn and len(pairs) == before and len(inputs) > 1:  # one input: run_batch's error says it
            hint = " (use --recursive for sub-folders)" if is_dir and not recursive and \
                _has_subfolders(p, Path(exclude) if exclude is not None else p) else ""
            log.warning("%s: no images found; skipped%s", s, hint)
    pairs = [(f, root) for f, root in pairs if not _recorded_output(f, out_dirs)]
    has_records: dict = {}
    pairs = [(f, root) for f, root in pairs if f in named or not _output_of_another_run(f, root, has_records)]
    seen, unique = set(), []
    for f, root in sorted(pairs, key=lambda fr: os.fspath(fr[0].absolute())):
        key = os.path.normcase(os.fspath(_resolved(f)))
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
        for f in (file.absolute(), _resolved(file)):
            try:
                rel = f.relative_to(base)
            except ValueError:
                continue
            rec = _record_file(base, rel)
            try:
                made = json.loads(rec.read_text()).get("output_file")
                st = file.stat()
            except (OSError, ValueError, AttributeError):
                continue
            if made is not None and (made.get("size"), made.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
                continue
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
            has_records[folder] = (folder / STATE_DIR / RECORDS_DIR).is_dir()
        if has_records[folder] and _recorded_output(file, (folder, _resolved(folder)),
                                                    "name the file on its own to deblur it again"):
            return True
    return False


def output_path(file: Path, root: Path, opts: BatchOptions) -> Path:
    """Where ``file`` (found under ``root``) is written."""
    try:
        rel = file.absolute().relative_to(root.absolute())
    except ValueError:
        rel = Path(file.name)
    ext = ("." + opts.ext.lower().lstrip(".")) if opts.ext else default_output_suffix(file)
    return Path(opts.out_dir) / rel.parent / f"{rel.stem}{opts.suffix}{ext}"


def side_output_paths(output: Path, opts: BatchOptions) -> list[Path]:
    """Files written next to ``output`` besides it: ``--save-blur-map``'s blur map and restore mask."""
    if not opts.restore.save_blur_map:
        return []
    from .blurmap import map_image_paths

    return list(map_image_paths(output))


# Output formats that hold 8 bits per sample only (photo.io writes them 8-bit whatever is asked).
_EIGHT_BIT_ONLY = (".jpg", ".jpeg", ".webp")


def plan(pairs: Sequence[tuple[Path, Path]], opts: BatchOptions) -> list[Job]:
    """Jobs for every input, in order. Pure: depends on paths only, not on which outputs exist, so
    every rank of a distributed run computes the same list.

    An output (or a blur map / restore mask beside it) that is an input file, or that another input
    already writes (two inputs of the same name, e.g. ``a.jpg`` and ``a.png`` with ``--ext png``),
    fails that job; the first input in sorted order keeps the name."""
    inputs = {os.path.normcase(os.fspath(_resolved(f))): f for f, _ in pairs}
    claimed: dict[str, tuple[Path, str]] = {}
    jobs = []
    for f, root in pairs:
        out = output_path(f, root, opts)
        error = None
        targets = [(out, "output")] + [(side, "blur map / restore mask") for side in side_output_paths(out, opts)]
        keys = [os.path.normcase(os.fspath(_resolved(t))) for t, _ in targets]
        for (t, what), key in zip(targets, keys):
            if error:
                break
            if key in inputs:
                error = f"{what} {t} is an input file; refusing to overwrite it (use --suffix or another -o)"
            elif key in claimed:
                other, other_what = claimed[key]
                error = (f"{what} {t} would also be the {other_what} of {other} (same name); "
                         "deblur them in separate runs or to separate -o folders")
        if error is None:
            for (t, what), key in zip(targets, keys):
                claimed[key] = (f, what)
        jobs.append(Job(f, out, error))
    return jobs


def shard(jobs: Sequence[Job], rank: int, world_size: int) -> list[Job]:
    """Rank ``rank``'s share: jobs rank, rank + world_size, ..."""
    return list(jobs[rank::world_size])


# ---------------------------------------------------------------------------------------- running


def _same_file_as_input(out: Path, input_ids: set) -> bool:
    try:
        st = out.stat()
    except OSError:
        return False
    return (st.st_dev, st.st_ino) in input_ids


def process_job(job: Job, deblurrer, opts: BatchOptions, progress: BatchProgress, rank: int = 0) -> FileResult:
    """Deblur one file. Bad inputs and write failures become a failed FileResult; other errors raise."""
    res = FileResult(str(job.input), str(job.output) if job.output else None, "failed", rank=rank)
    t0 = time.perf_counter()
    photo = None
    try:
        photo = read_photo(job.input, opts.raw, max_pixels=opts.max_pixels)
        res.width, res.height = photo.size
        res.raw = photo.raw
        restored = photo.map_pages(lambda rgb: deblurrer.restore(rgb, progress=progress.tiles))  # every page
        restored, fin = finish_photo(photo, restored, opts.restore)  # strength, focus / mask
        res.restore = {**opts.restore.describe(), "restored_fraction": round(fin.restored_fraction, 4)}
        for w in fin.warnings:  # strength / focus: logged as the reader's warnings are, and in the summary
            log.warning("%s: %s", job.input, w)
        res.warnings += fin.warnings
        write_photo(job.output, restored, bit_depth=opts.bit_depth)
        _side_outputs(job, opts, photo.rgb, fin)
        res.status = "done"
    except InputError as e:
        res.reason = e.reason if os.fspath(e.path) == os.fspath(job.input) else str(e)
    except CmddError as e:
        res.reason = str(e)
    except MemoryError:
        res.reason = "out of memory"
    except OSError as e:
        res.reason = f"cannot write {job.output}: {e.strerror or e}"
    if photo is not None:
        res.warnings = list(photo.warnings) + res.warnings  # photo's: shared by reader and writer
    res.seconds = round(time.perf_counter() - t0, 3)
    return res


def _side_outputs(job: Job, opts: BatchOptions, before, fin) -> None:
    """``--save-blur-map`` images next to the output and ``--report`` previews."""
    if opts.restore.save_blur_map and fin.blur_map is not None:
        from .blurmap import save_map_images

        save_map_images(job.output, fin.blur_map, fin.weight)
    if opts.report:
        from .report import write_previews

        write_previews(opts.out_dir, job.output, before, fin.rgb)


# ---------------------------------------------------------------------------------------- resume records


def weights_digest(weights: Optional[str | os.PathLike]) -> str:
    """sha256 of the weights file (the shipped one when ``weights`` is None): part of what made an
    output. ``unreadable:PATH`` when it cannot be read (the engine reports why when it loads it)."""
    from ..data.manifest import sha256_file
    from ..errors import WeightsError
    from ..model.weights import resolve_weights

    try:
        path = resolve_weights(weights)
    except WeightsError:
        return f"unreadable:{weights}"
    try:
        return sha256_file(path)
    except OSError:
        return f"unreadable:{path}"


# Recipe entries added after records were first written: a record without one is not failed for it.
_LATER_RECIPE_KEYS = ("engine",)


def recipe(opts: BatchOptions, source: Optional[Path] = None) -> dict:
    """The settings that make an output what it is (compared on resume), as JSON values. The RAW
    development is part of it only for a RAW ``source`` (or when no source is given)."""
    d = {**opts.recipe, "bit_depth": opts.bit_depth}
    if source is None or is_raw(source):
        d["raw_development"] = opts.raw.postprocess_params()
    return json.loads(json.dumps(d, default=str))


def record_path(output: Path, opts: BatchOptions) -> Path:
    """``out_dir/.cmdd/records/<output relative to out_dir>.json``."""
    try:
        rel = Path(output).relative_to(Path(opts.out_dir))
    except ValueError:
        rel = Path(Path(output).name)
    return _record_file(Path(opts.out_dir), rel)


# Longest record file name (bytes): most file systems allow 255; an output name near that limit gets
# a shortened record name with a digest of the full name.
_MAX_RECORD_NAME = 255


def _record_file(out_dir: Path, rel: Path) -> Path:
    """The resume record of the output at ``rel`` (relative to ``out_dir``)."""
    name = rel.name + ".json"
    if len(os.fsencode(name)) > _MAX_RECORD_NAME:
        import hashlib

        digest = hashlib.sha256(os.fsencode(rel.name)).hexdigest()[:16]
        name = os.fsdecode(os.fsencode(rel.name)[:180]) + f"~{digest}.json"
    return out_dir / STATE_DIR / RECORDS_DIR / rel.parent / name


def source_identity(path: Path) -> dict:
    """Path, size and modification time of an input: what a resume record compares."""
    st = Path(path).stat()
    return {"path": os.fspath(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def resume_problem(job: Job, opts: BatchOptions) -> Optional[str]:
    """None when ``job.output`` exists and its record says it was made from this very input (same
    path, size and mtime) with the same :func:`recipe`; otherwise the reason it must not be kept."""
    hint = "use --overwrite to redo it, or --suffix / another -o to keep it"
    try:
        rec = json.loads(record_path(job.output, opts).read_text())
        made_from, made_with = rec["source"], rec["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{job.output} exists but there is no record of what made it (another program, or an older " \
               f"or interrupted run); {hint}"
    try:
        now = source_identity(job.input)
    except OSError as e:
        return f"cannot read {job.input} ({e.strerror or e})"
    if made_from.get("path") != now["path"]:
        return f"{job.output} exists but was made from {made_from.get('path')}; {hint}"
    if (made_from.get("size"), made_from.get("mtime_ns")) != (now["size"], now["mtime_ns"]):
        return f"{job.output} was made from an earlier version of this file (size or time changed); {hint}"
    made = rec.get("output_file")
    if isinstance(made, dict):
        try:
            st = job.output.stat()
            changed = (made.get("size"), made.get("mtime_ns")) != (st.st_size, st.st_mtime_ns)
        except OSError:
            changed = True
        if changed:
            return f"{job.output} was changed after cmdd wrote it (size or time differs from its record); {hint}"
    current = recipe(opts, job.input)
    if not is_raw(job.input):  # older records hold the RAW development for every file
        made_with = {k: v for k, v in made_with.items() if k != "raw_development"}
    for k in _LATER_RECIPE_KEYS:
        if k not in made_with:
            current.pop(k, None)
    if made_with != current:
        keys = []
        for k in sorted(set(made_with) | set(current)):
            a, b = made_with.get(k), current.get(k)
            if isinstance(a, dict) and isinstance(b, dict):
                keys += [f"{k}.{j}" for j in sorted(set(a) | set(b)) if a.get(j) != b.get(j)]
            elif a != b:
                keys.append(k)
        return f"{job.output} was made with other settings ({', '.join(keys)}); {hint}"
    return None


def _forget_record(job: Job, opts: BatchOptions) -> Optional[dict]:
    """Before (re)making an output: drop its old record (so a stale output never passes for new) and
    return the source's identity as it is now (None if it cannot be read: the job fails anyway)."""
    try:
        record_path(job.output, opts).unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("%s: cannot remove the old resume record (%s)", job.output, e.strerror or e)
    try:
        return source_identity(job.input)
    except OSError:
        return None


def _remember(job: Job, opts: BatchOptions, source: Optional[dict], res: FileResult) -> None:
    """After an output is written: its record (a failure is a warning; the next run then reports the
    output as unrecorded instead of skipping it)."""
    if source is None:
        return
    try:
        st = Path(job.output).stat()
        made = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}  # tells this output from a later copy
    except OSError:
        made = None
    payload = {"output": os.fspath(job.output), "output_file": made, "source": source,
               "settings": recipe(opts, job.input), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if res.raw is not None:  # what LibRaw did, which --raw-half-size does not always decide
        payload["raw_development_applied"] = res.raw
    try:
        atomic_write_bytes(record_path(job.output, opts), (json.dumps(payload, indent=1) + "\n").encode(),
                           fsync=False)
    except OSError as e:
        msg = f"resume record not written ({e.strerror or e}): a later run will not skip this output"
        log.warning("%s: %s", job.output, msg)
        res.warnings.append(msg)


def _side_output_problem(job: Job, opts: BatchOptions, input_ids: set) -> Optional[str]:
    """Why the blur map / restore mask beside ``job.output`` must not be written, or None. They are
    replaced only with the output itself: when the output is kept (resumed) they are not touched, and
    a file of that name that is an input, or that exists while the output does not, is not replaced
    (unless ``--overwrite``; inputs never)."""
    for side in side_output_paths(job.output, opts):
        if _same_file_as_input(side, input_ids):
            return f"{side} is an input file; refusing to overwrite it (use --suffix or another -o)"
        try:
            exists = side.exists() or side.is_symlink()
        except OSError:
            exists = True
        if exists and not opts.overwrite and not job.output.exists():
            return f"{side} exists and is not from this output; use --overwrite to replace it, or --suffix / another -o"
    return None


def _unusable_output(path: Path) -> Optional[str]:
    """Why ``path`` cannot be an output name at all (too long for the file system, ...), or None."""
    try:
        path.exists()
    except OSError as e:
        name = path.name if len(path.name) <= 60 else path.name[:40] + "..."  # the reason says why it is long
        return f"cannot use output {name}: {e.strerror or e}"
    return None


def _unreadable(path: Path) -> Optional[str]:
    """Why ``path`` cannot even be opened (missing, a folder, unreadable, empty), or None."""
    try:
        check_readable(Path(path))
    except InputError as e:
        return e.reason
    return None


def run_jobs(jobs: Sequence[Job], make_deblurrer: Callable[[], object], opts: BatchOptions,
             progress: Optional[BatchProgress] = None, rank: int = 0,
             input_ids: Optional[set] = None) -> list[FileResult]:
    """Run this rank's jobs in order; the deblurrer is built only if some file needs it."""
    progress = progress or BatchProgress()
    input_ids = input_ids or set()
    results: list[FileResult] = []
    todo: list[Job] = []
    for job in jobs:
        unreadable = None if job.error else _unreadable(job.input)
        if job.error or unreadable:
            results.append(FileResult(str(job.input), str(job.output), "failed", job.error or unreadable, rank=rank))
        elif _same_file_as_input(job.output, input_ids):
            results.append(FileResult(str(job.input), str(job.output), "failed",
                                      f"output {job.output} is an input file; refusing to overwrite it", rank=rank))
        elif (unusable := _unusable_output(job.output)) is not None:
            results.append(FileResult(str(job.input), str(job.output), "failed", unusable, rank=rank))
        elif (side := _side_output_problem(job, opts, input_ids)) is not None:
            results.append(FileResult(str(job.input), str(job.output), "failed", side, rank=rank))
        elif job.output.exists() and not opts.overwrite:
            problem = resume_problem(job, opts)
            if problem is None:
                results.append(FileResult(str(job.input), str(job.output), "skipped",
                                          "output exists, made from this file with the same settings", rank=rank))
            else:
                results.append(FileResult(str(job.input), str(job.output), "failed", problem, rank=rank))
        elif opts.bit_depth == 16 and job.output.suffix.lower() in _EIGHT_BIT_ONLY:  # after resume: kept outputs skip
            results.append(FileResult(str(job.input), str(job.output), "failed",
                                      f"--bits 16: output {job.output.name} would be "
                                      f"{job.output.suffix.lstrip('.').upper()}, which holds 8 bits per sample "
                                      "(use --ext png or --ext tif)", rank=rank))
        elif opts.dry_run:
            results.append(FileResult(str(job.input), str(job.output), "planned", rank=rank))
        else:
            todo.append(job)
    if not todo:
        return _in_job_order(results, jobs)
    progress.start(len(todo))
    made = 0
    try:
        deblurrer = make_deblurrer()
        for job in todo:
            progress.file_started(job)
            source = _forget_record(job, opts)
            res = process_job(job, deblurrer, opts, progress, rank)
            if res.status == "done":
                _remember(job, opts, source, res)
            if res.status == "failed":  # the CLI lists failures at the end; logged for library callers
                log.debug("failed: %s: %s", job.input, res.reason)
            results.append(res)
            made += 1
            progress.file_finished(res)
    except KeyboardInterrupt as e:  # the file being made leaves nothing behind (atomic writes)
        raise BatchInterrupted(_in_job_order(results, jobs), len(todo) - made) from e
    return _in_job_order(results, jobs)


def _in_job_order(results: list[FileResult], jobs: Sequence[Job]) -> list[FileResult]:
    order = {str(j.input): i for i, j in enumerate(jobs)}
    return sorted(results, key=lambda r: order.get(r.input, len(order)))


# ---------------------------------------------------------------------------------------- ranks


def merge_reports(reports: Sequence[dict]) -> BatchReport:
    """One report from per-rank reports: files in sorted-input order, no file twice.

    A file that more than one rank claims to have handled is a bug in the split: it raises.
    """
    files: dict[str, dict] = {}
    for rep in reports:
        for f in rep["files"]:
            if f["input"] in files:
                raise CmddError(f"{f['input']} was handled by ranks {files[f['input']]['rank']} and {f['rank']}")
            files[f["input"]] = f
    results = [FileResult(**files[k]) for k in sorted(files)]
    settings = dict(reports[0].get("settings", {})) if reports else {}
    return BatchReport(results, settings, world_size=max([len(reports)] + [r.get("world_size", 1) for r in reports]))


# ---------------------------------------------------------------------------------------- top level


def run_batch(inputs: Sequence[str | os.PathLike], opts: BatchOptions, make_deblurrer: Callable[[], object],
              progress: Optional[BatchProgress] = None, dist_info: Optional[DistInfo] = None,
              settings: Optional[dict] = None) -> BatchReport:
    """Discover, plan, shard, run, merge. Raises CmddError when no image is found at all.

    ``make_deblurrer`` builds the engine (called at most once, and not at all for a dry run or when
    every output exists). ``settings`` is recorded in the report next to the RAW development.
    """
    info = dist_info or DistInfo()
    pairs = discover(inputs, opts.recursive, exclude=opts.out_dir, warn=info.is_main)
    if info.world_size > 1:  # every rank shards rank 0's list (records written meanwhile change discovery)
        pairs = gather_objects(pairs, info)[0]
    if not pairs:
        nested = not opts.recursive and any(_has_subfolders(Path(i), Path(opts.out_dir)) for i in inputs)
        raise CmddError("no images found in " + ", ".join(os.fspath(i) for i in inputs)
                        + (" (use --recursive for sub-folders)" if nested else ""))
    if not opts.dry_run:
        ensure_output_dir(Path(opts.out_dir), "-o")
    jobs = plan(pairs, opts)
    input_ids = set()
    for f, _ in pairs:
        try:
            st = f.stat()
            input_ids.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    mine = shard(jobs, info.rank, info.world_size)
    try:
        results = run_jobs(mine, make_deblurrer, opts, progress, info.rank, input_ids)
    except BatchInterrupted as e:  # one process: the summary says what this run finished, then stop
        if info.world_size == 1 and any(r.status in ("done", "failed") for r in e.results):
            try:
                rep = BatchReport(e.results, dict(settings or {}), 1)
                rep.settings["interrupted"] = {"files_left": e.left}
                write_summary(rep, opts.out_dir)
            except OSError:
                pass
        raise
    all_settings = {
        **(settings or {}),
        "output": {"dir": str(opts.out_dir), "ext": opts.ext or "same as input (RAW -> tif)",
                   "suffix": opts.suffix, "bit_depth": opts.bit_depth or "same as input",
                   "overwrite": opts.overwrite},
        "raw_development": opts.raw.describe(),
        "max_pixels": opts.max_pixels,
        "recipe": recipe(opts),
    }
    local = BatchReport(results, all_settings, info.world_size).to_dict()
    report = merge_reports(gather_objects(local, info))
    if not opts.dry_run and info.rank == 0 and any(r.status in ("done", "failed") for r in report.results):
        try:
            write_summary(report, opts.out_dir)
        except OSError as e:  # e.g. a full disk: the report itself is still shown
            report.summary_error = (f"cannot write {Path(opts.out_dir) / STATE_DIR / SUMMARY_NAME} "
                                    f"({e.strerror or e})")
            log.warning("%s", report.summary_error)
    return report


def _has_subfolders(folder: Path, out_dir: Path) -> bool:
    """Whether ``folder`` has a sub-folder that ``--recursive`` would walk (not hidden, not the output)."""
    try:
        return folder.is_dir() and any(d.is_dir() and not _is_hidden(d.name) and d.resolve() != out_dir.resolve()
                                       for d in folder.iterdir())
    except OSError:
        return False


def write_summary(report: BatchReport, out_dir: Path) -> Path:
    """Write the run summary to ``out_dir/.cmdd/summary.json`` (atomically)."""
    path = Path(out_dir) / STATE_DIR / SUMMARY_NAME
    payload = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **report.to_dict()}
    atomic_write_bytes(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())
    return path
