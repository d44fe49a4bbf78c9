"""The file batch behind `cmdd deblur`: plan outputs, deblur each file, merge the ranks' reports.

* Inputs come from :mod:`.inputs` (folders, globs, earlier runs' outputs left out); the options are
  :class:`.batch_options.BatchOptions`; jobs, results and the report are in :mod:`.results`.
* Outputs mirror the input tree under ``out_dir``: a file found in folder ``F`` at ``F/a/b.jpg``
  goes to ``out_dir/a/b<suffix>.<ext>``; a file named on its own goes to ``out_dir/<name>``.
* An output that would be an input file is refused; two inputs that map to one output fail the
  second. Resume (:mod:`.resume`): an existing output is skipped only when its record matches the
  input and the settings; otherwise the file fails with a reason saying which, so nothing is kept
  silently. ``overwrite`` redoes every output.
* Each output is written through a temp file and ``os.replace`` (see cmddcli.atomic).
* A file that cannot be used fails with a one-line reason and the batch goes on.
* Under ``torchrun`` (WORLD_SIZE / RANK / LOCAL_RANK), rank r takes files r, r + world, ... of the
  sorted list, and the per-rank reports are merged with ``all_gather_object`` over gloo.

A summary (``BatchReport.to_dict()``: settings, RAW development, one row per file) is written to
``out_dir/.cmdd/summary.json``.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..atomic import atomic_write_bytes, ensure_output_dir
from ..errors import CmddError, InputError
from ..photo import default_output_suffix, holds_8_bits_only, read_photo, write_photo
from ..photo.io import check_readable
from ..runtime import DistInfo, gather_objects
from . import resume
from .batch_options import BatchOptions
from .inputs import discover, has_subfolders, resolved
from .results import BatchInterrupted, BatchProgress, BatchReport, FileResult, Job
from .resume import STATE_DIR
from .strength import finish_photo

__all__ = ["BatchOptions", "BatchReport", "BatchInterrupted", "BatchProgress", "FileResult", "Job", "discover",
           "merge_reports", "plan", "process_job", "run_batch", "run_jobs", "shard", "write_summary"]

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"


# ---------------------------------------------------------------------------------------- planning


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


def plan(pairs: Sequence[tuple[Path, Path]], opts: BatchOptions) -> list[Job]:
    """Jobs for every input, in order. Pure: depends on paths only, not on which outputs exist, so
    every rank of a distributed run computes the same list.

    An output (or a blur map / restore mask beside it) that is an input file, or that another input
    already writes (two inputs of the same name, e.g. ``a.jpg`` and ``a.png`` with ``--ext png``),
    fails that job; the first input in sorted order keeps the name."""
    inputs = {os.path.normcase(os.fspath(resolved(f))): f for f, _ in pairs}
    claimed: dict[str, tuple[Path, str]] = {}
    jobs = []
    for f, root in pairs:
        out = output_path(f, root, opts)
        error = None
        targets = [(out, "output")] + [(side, "blur map / restore mask") for side in side_output_paths(out, opts)]
        keys = [os.path.normcase(os.fspath(resolved(t))) for t, _ in targets]
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
    """Deblur one file. Bad inputs, write failures and unexpected exceptions (a decoder's or cmdd's own
    bug: logged with the traceback) become a failed FileResult, so the batch goes on; KeyboardInterrupt
    and other BaseExceptions raise."""
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
        res.side_files = [str(p) for p in _side_outputs(job, opts, photo.rgb, fin)]
        res.status = "done"
    except InputError as e:
        res.reason = e.reason if os.fspath(e.path) == os.fspath(job.input) else str(e)
    except CmddError as e:
        res.reason = str(e)
    except MemoryError:
        res.reason = "out of memory"
    except OSError as e:
        res.reason = f"cannot write {job.output}: {e.strerror or e}"
    except Exception as e:  # noqa: BLE001 - a decoder's or cmdd's own bug: this file fails, the batch goes on
        log.error("%s: unexpected %s", job.input, type(e).__name__, exc_info=True)  # the traceback, in the log
        res.reason = f"unexpected error ({type(e).__name__}: {' '.join(str(e).split())}); please report it"
    if photo is not None:
        res.warnings = list(photo.warnings) + res.warnings  # photo's: shared by reader and writer
    res.seconds = round(time.perf_counter() - t0, 3)
    return res


def _side_outputs(job: Job, opts: BatchOptions, before, fin) -> list[Path]:
    """``--save-blur-map`` images next to the output (returned: the output's record lists them) and
    ``--report`` previews (in OUT/.cmdd, never walked)."""
    written: list[Path] = []
    if opts.restore.save_blur_map and fin.blur_map is not None:
        from .blurmap import save_map_images

        written = save_map_images(job.output, fin.blur_map, fin.weight)
    if opts.report:
        from .report import write_previews

        write_previews(opts.out_dir, job.output, before, fin.rgb)
    return written


def _side_output_problem(job: Job, opts: BatchOptions, input_ids: set) -> Optional[str]:
    """Why the blur map / restore mask beside ``job.output`` must not be written, or None. They are
    replaced only with the output itself: when the output is kept (resumed) they are not touched, and
    a file of that name that is an input, or that exists while the output does not and is not the
    output's own (listed in its record, unchanged), is not replaced (unless ``--overwrite``; inputs
    never)."""
    for side in side_output_paths(job.output, opts):
        if _same_file_as_input(side, input_ids):
            return f"{side} is an input file; refusing to overwrite it (use --suffix or another -o)"
        try:
            exists = side.exists() or side.is_symlink()
        except OSError:
            exists = True
        if exists and not opts.overwrite and not job.output.exists() \
                and not resume.owns_side_file(job.output, opts.out_dir, side):
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
    """Why ``path`` cannot even be opened (missing, a folder, not a regular file, unreadable, empty),
    or None. Only regular files are opened: a named pipe would block the batch forever."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        mode = None  # missing, a loop, no permission: check_readable says which
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else \
            "a device" if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else "not a file"
        return f"not a regular file ({kind}); only regular files are read"
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
        elif job.output.exists() and not opts.overwrite \
                and not resume.interrupted(job.input, job.output, opts.out_dir):  # a stopped run's: redone
            problem = resume.resume_problem(job.input, job.output, opts.out_dir, opts.recipe_for(job.input))
            if problem is None:
                results.append(FileResult(str(job.input), str(job.output), "skipped",
                                          "output exists, made from this file with the same settings", rank=rank))
            else:
                results.append(FileResult(str(job.input), str(job.output), "failed", problem, rank=rank))
        elif opts.bit_depth == 16 and holds_8_bits_only(job.output):  # after resume: kept outputs skip
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
            res = _make(job, deblurrer, opts, progress, rank)
            if res.status == "failed":  # the CLI lists failures at the end; logged for library callers
                log.debug("failed: %s: %s", job.input, res.reason)
            results.append(res)
            made += 1
            progress.file_finished(res)
    except KeyboardInterrupt as e:  # the file being made leaves nothing behind (atomic writes)
        raise BatchInterrupted(_in_job_order(results, jobs), len(todo) - made) from e
    return _in_job_order(results, jobs)


def _make(job: Job, deblurrer, opts: BatchOptions, progress: BatchProgress, rank: int) -> FileResult:
    """One output and its record: pending (listing the files about to be written), the files, then
    done (with their digests); side files of the earlier record that this run does not write again
    (a restore mask no longer needed) are removed, so nothing unrecorded is left beside the output."""
    old = resume.read_record(job.output, opts.out_dir)
    sides = side_output_paths(job.output, opts)
    try:
        source = resume.begin(job.input, job.output, opts.out_dir, opts.recipe_for(job.input), sides)
    except OSError as e:
        return FileResult(str(job.input), str(job.output), "failed",
                          f"cannot write the resume record of {job.output} ({e.strerror or e})", rank=rank)
    try:
        res = process_job(job, deblurrer, opts, progress, rank)
    except BaseException:  # Ctrl-C / SIGTERM before the output is in place: the earlier state stands
        resume.abandon(job.output, opts.out_dir, old, sides)
        raise
    if res.status != "done":
        resume.abandon(job.output, opts.out_dir, old, sides)
    else:
        written = [Path(p) for p in res.side_files]
        for stale in _stale_side_files(old, job.output, opts.out_dir, written):
            try:
                stale.unlink()
            except OSError as e:
                log.warning("%s: cannot remove the earlier run's %s (%s)", job.output, stale.name, e.strerror or e)
        warning = resume.remember(job.output, opts.out_dir, source, opts.recipe_for(job.input), res.raw, written)
        if warning:
            res.warnings.append(warning)
    return res


def _stale_side_files(old: Optional[dict], output: Path, out_dir: Path, written: list[Path]) -> list[Path]:
    """Side files the earlier record of ``output`` lists, unchanged since, that this run did not write."""
    if not old or old.get("state") == resume.PENDING:
        return []
    keep = {os.fspath(p.absolute()) for p in written}
    stale = []
    for entry in resume.side_entries(old):
        p = Path(out_dir) / entry["path"]
        if os.fspath(p.absolute()) not in keep and p.parent == output.parent and resume.same_content(p, entry):
            stale.append(p)
    return stale


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
    dropped: list = []  # named files that are another input (a symlink named beside its target)
    pairs = discover(inputs, opts.recursive, exclude=opts.out_dir, warn=info.is_main, dropped=dropped)
    if info.world_size > 1:  # every rank shards rank 0's list (records written meanwhile change discovery)
        pairs = gather_objects(pairs, info)[0]
    if not pairs:
        nested = not opts.recursive and any(has_subfolders(Path(i), Path(opts.out_dir)) for i in inputs)
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
    if info.rank == 0:  # each named input gets a row
        results += [FileResult(str(f), None, "skipped", why, rank=0) for f, why in dropped]
    all_settings = {
        **(settings or {}),
        "output": {"dir": str(opts.out_dir), "ext": opts.ext or "same as input (RAW -> tif)",
                   "suffix": opts.suffix, "bit_depth": opts.bit_depth or "same as input",
                   "overwrite": opts.overwrite},
        "raw_development": opts.raw.describe(),
        "max_pixels": opts.max_pixels,
        "recipe": opts.recipe_for(),
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


def write_summary(report: BatchReport, out_dir: Path) -> Path:
    """Write the run summary to ``out_dir/.cmdd/summary.json`` (atomically)."""
    path = Path(out_dir) / STATE_DIR / SUMMARY_NAME
    payload = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **report.to_dict()}
    atomic_write_bytes(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())
    return path
