"""`cmdd deblur`: deblur photos, folders of photos and camera RAW files."""

from __future__ import annotations

import datetime
import signal
import threading
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from ..errors import CmddError
from .common import (
    check_tile, device_option, err_console, handle_errors, json_option, overlap_option, precision_option, print_failures,
    print_json, quiet_option, scan_option, setup_logging, threads_option, tile_option, weights_option)

class _RichProgress:
    """Files and tiles bars on stderr (implements cmddcli.engine.runner.BatchProgress)."""

    def __init__(self, progress: Progress):
        self.p = progress
        self.files = None
        self.tile_task = None

    def start(self, total_files: int) -> None:
        self.files = self.p.add_task("files", total=total_files)
        self.tile_task = self.p.add_task("tiles", total=1)

    def file_started(self, job) -> None:
        self.p.update(self.files, description=f"[bold]{escape(job.input.name)}")
        self.p.reset(self.tile_task, total=1, description="tiles")

    def tiles(self, done: int, total: int) -> None:
        self.p.update(self.tile_task, completed=done, total=total)

    def file_finished(self, result) -> None:
        self.p.advance(self.files)


def _summary_table(report) -> Table:
    c = report.counts()
    t = Table(title="cmdd deblur", title_style="bold")
    t.add_column("status")
    t.add_column("files", justify="right")
    for status, style in (("done", "green"), ("skipped", "yellow"), ("failed", "red"), ("planned", "cyan")):
        if c.get(status) or status in ("done", "failed"):
            t.add_row(f"[{style}]{status}[/]", str(c.get(status, 0)))
    return t


def _failures_table(report) -> Table:
    t = Table(title="failed", title_style="bold red")
    t.add_column("file", overflow="fold")
    t.add_column("reason", overflow="fold")
    for r in report.failed:
        t.add_row(escape(r.input), escape(r.reason))
    return t


def _plan_table(report) -> Table:
    t = Table(title="dry run: what would be done", title_style="bold")
    t.add_column("input", overflow="fold")
    t.add_column("output", overflow="fold")
    t.add_column("action")
    for r in report.results:
        action = {"planned": "[cyan]deblur[/]", "skipped": "[yellow]skip (same source and settings)[/]"}.get(
            r.status, f"[red]fail: {escape(r.reason)}[/]")
        t.add_row(escape(r.input), escape(r.output or ""), action)
    return t


def register(app: typer.Typer) -> None:
    """Add ``cmdd deblur`` to ``app``."""

    @app.command("deblur")
    @handle_errors
    def deblur_cmd(
        inputs: List[str] = typer.Argument(..., help="Image files, folders or glob patterns ('*.NEF')."),
        output: Path = typer.Option(
            ..., "--output", "--out", "-o",
            help="Output folder (the input tree is mirrored here); --out as in eval, train and bench."),
        recursive: bool = typer.Option(False, "--recursive", "-r", help="Walk sub-folders of folder inputs."),
        ext: Optional[str] = typer.Option(
            None, "--ext", help="Output format: png, tif, jpg or webp (default: the input's; RAW -> 16-bit tif)."),
        suffix: str = typer.Option("", "--suffix", help="Appended to output file stems, e.g. _sharp."),
        bit_depth: Optional[int] = typer.Option(
            None, "--bit-depth", "--bits", help="8 or 16 bits per sample (default: the input's; JPEG/WebP are 8)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Redo files whose output exists (default: skip)."),
        raw_linear: bool = typer.Option(False, "--raw-linear", help="Develop RAW with linear gamma (1, 1): sRGB primaries, no tone curve and no ICC profile, so viewers "
                 "show it dark; for further processing."),
        raw_half_size: bool = typer.Option(
            False, "--raw-half-size",
            help="Develop RAW at half size (faster; LibRaw ignores it for already demosaiced LinearRaw DNGs, "
                 "which is recorded per file)."),
        max_megapixels: float = typer.Option(
            180.0, "--max-megapixels",
            help="Refuse images larger than this (checked from the header before decoding; the pages of a "
                 "TIFF count together). 0 = no limit."),
        weights: Optional[Path] = weights_option(),
        device: str = device_option(),
        precision: str = precision_option(),
        tile: Optional[int] = tile_option(),
        overlap: int = overlap_option(),
        threads: Optional[int] = threads_option(),
        strength: float = typer.Option(
            1.0, "--strength", "-s",
            help="0 = as shot, 1 = the network's result, up to 1.5 extrapolates; blended in linear light."),
        focus: str = typer.Option(
            "all", "--focus",
            help="all: restore everything. auto: restore only the least-blurred region (the subject) and "
                 "leave a blurrier background (bokeh) as shot."),
        mask: Optional[Path] = typer.Option(
            None, "--mask",
            help="Grey image of the photo's size: white = restore, black = keep as shot, grey = blend "
                 "(hard edges feathered over 8 px)."),
        save_blur_map: bool = typer.Option(
            False, "--save-blur-map",
            help="Also write NAME_blurmap.png (estimated defocus; white = 16 px CoC radius or more) and, "
                 "with --mask (or --focus auto when not everything was restored), NAME_restoremask.png next to each output."),
        html_report: bool = typer.Option(
            False, "--report", help="Write OUT/index.html: before/after slider per photo (static, opens offline)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be done."),
        quiet: bool = quiet_option(),
        json_out: bool = json_option(),
        scan: Optional[str] = scan_option(),
    ):
        """Remove defocus blur from photos: JPEG, PNG, TIFF, WebP and camera RAW (DNG, NEF, CR2, ARW, ...).

        Resume: an output is skipped only if OUT/.cmdd/records says it came from the same file and settings.

        Any other existing output fails with the reason (--overwrite redoes it); any failure makes the exit code 1.

        Kept: bit depth, gray, alpha, palette and colour-key transparency, premultiplied alpha (undone, redone in TIFF).

        Kept: the range of float TIFFs (8/16-bit outputs clip it, with a warning), every page of a TIFF in TIFF output.

        Kept in every format: ICC profile and EXIF (Make, Model, dates, exposure, ISO, focal length, lens, GPS), RAW too.

        Not kept: XMP, MakerNote, thumbnails, JPEG alpha, further pages / frames in PNG/JPEG/WebP (with a warning).

        EXIF orientation is applied to the pixels and written as 1.
        """
        from .. import runtime
        from ..engine import runner as batch
        from ..engine.resume import weights_digest
        from ..engine.strength import RestoreOptions
        from ..photo import OUTPUT_FORMATS, RawSettings

        setup_logging(quiet=quiet or json_out)
        if ext is not None and ext.lower().lstrip(".") not in OUTPUT_FORMATS:
            raise CmddError(f"--ext must be one of png, tif, jpg, webp (got {ext!r})")
        if bit_depth not in (None, 8, 16):
            raise CmddError(f"--bit-depth must be 8 or 16 (got {bit_depth})")
        if bit_depth == 16 and ext is not None and ext.lower().lstrip(".") not in ("png", "tif", "tiff"):
            raise CmddError(f"--bit-depth 16 needs --ext png or tif ({ext} is 8-bit only)")
        check_tile(tile, overlap)
        # Settings the engine would refuse, checked before the output folder is made or a photo is read.
        from ..engine.options import PRECISIONS
        from ..model.weights import resolve_weights

        if (precision or "auto").lower() not in PRECISIONS:
            raise CmddError(f"--precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
        if dry_run:
            runtime.check_device_name(device)
        else:
            runtime.resolve_device(device)
        resolve_weights(weights)
        if max_megapixels < 0:
            raise CmddError(f"--max-megapixels must be >= 0 (0 = no limit; got {max_megapixels:g})")
        restore = RestoreOptions(strength=strength, focus=focus.lower(), mask=mask, save_blur_map=save_blur_map)
        info = runtime.DistInfo.from_env()
        # The engine settings change an output by a few 8-bit levels at most, but they made it: part of
        # the recipe, as given (precision "auto" stays "auto", so a resume on another machine matches).
        engine_recipe = {"precision": (precision or "auto").lower(), "tile": "auto" if tile is None else tile}
        if tile != 0:
            engine_recipe["overlap"] = overlap  # whole-image inference has no overlap
        opts = batch.BatchOptions(
            out_dir=output, recursive=recursive, ext=ext.lower().lstrip(".") if ext else None, suffix=suffix,
            overwrite=overwrite, bit_depth=bit_depth, raw=RawSettings(linear=raw_linear, half_size=raw_half_size),
            dry_run=dry_run, max_pixels=int(max_megapixels * 1e6) or None,
            recipe={"weights_sha256": weights_digest(weights),
                    "restore": {k: v for k, v in restore.describe().items() if k != "save_blur_map"},
                    "engine": engine_recipe},
            restore=restore, report=html_report and not dry_run,
        )
        if opts.report and not overwrite:  # refused before any photo, not after the batch
            from ..engine.report import foreign_report

            if (page := foreign_report(Path(output))) is not None:
                raise CmddError(f"{page} exists and is not a cmdd report; --report would replace it "
                                "(remove it, use another -o, or --overwrite)")
        engine_settings: dict = {}
        if dry_run:  # what the real run refuses before any photo (the Deblurrer does it there)
            from ..model import ssm

            ssm.choose_backend(runtime.resolve_device(device).type, needs_grad=False)

        def make_deblurrer():
            from ..engine import Deblurrer

            n = threads or max(1, runtime.available_cores() // max(1, info.local_world_size))
            engine = Deblurrer(weights, device=runtime.device_for_rank(device, info), precision=precision, tile=tile,
                               overlap=overlap, threads=n)
            engine_settings.update(engine.describe())
            return engine

        show = not (quiet or json_out) and info.rank == 0
        info = runtime.join_group(info, backend="gloo",
                                  timeout=datetime.timedelta(hours=runtime.GATHER_TIMEOUT_HOURS))
        stopped_by = []

        def on_sigterm(signum, frame):  # SIGTERM ends the batch as Ctrl-C does: finished outputs kept, a message
            stopped_by.append(signum)
            raise KeyboardInterrupt

        old_term = signal.signal(signal.SIGTERM, on_sigterm) if threading.current_thread() is threading.main_thread() else None
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TextColumn("eta"), TimeRemainingColumn(), console=err_console, transient=True,
                          disable=not show) as bars:
                report = batch.run_batch(inputs, opts, make_deblurrer, _RichProgress(bars), info,
                                         settings={"engine": engine_settings, "restore": restore.describe()})
        except batch.BatchInterrupted as e:
            if info.rank == 0:
                done = sum(r.status == "done" for r in e.results)
                err_console.print(f"[yellow]interrupted[/]: {done} file(s) finished in this run, {e.left} left "
                                  "(the one in progress leaves nothing behind); run the same command again to "
                                  "resume", highlight=False, soft_wrap=True)
                if e.results and any(r.status == "failed" for r in e.results):
                    print_failures((r.input, r.reason) for r in e.results if r.status == "failed")
            raise typer.Exit(128 + (stopped_by[0] if stopped_by else signal.SIGINT))
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            runtime.shutdown_distributed(info)

        if opts.report and info.rank == 0:
            from ..engine.report import write_report

            page = write_report(report.to_dict(), output, replace_foreign=overwrite)
            if not (quiet or json_out):
                err_console.print(f"report: [bold]{escape(str(page))}[/]", highlight=False)
        if info.rank == 0:
            if json_out:
                print_json(report.to_dict())
            elif not quiet:
                err_console.print(_plan_table(report) if dry_run else _summary_table(report))
                if report.failed and not dry_run:
                    err_console.print(_failures_table(report))
            elif report.failed:
                print_failures((r.input, r.reason) for r in report.failed)
        if report.failed or report.summary_error:
            raise typer.Exit(1)
