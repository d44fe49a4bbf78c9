"""`cmdd deblur`: deblur photos, folders of photos and camera RAW files."""

from __future__ import annotations

import datetime
import signal
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from .common import (
    antiring_option, device_option, err_console, handle_errors, json_option, overlap_option, precision_option,
    print_failures, print_json, quiet_option, scan_option, setup_logging, threads_option, tile_option, weights_option)

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
        antiring: str = antiring_option(),
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
        from ..signals import stop_on_signals

        setup_logging(quiet=quiet or json_out)
        opts = batch.BatchOptions.for_deblur(
            output, weights=weights, device=device, precision=precision, tile=tile, overlap=overlap,
            recursive=recursive, ext=ext, suffix=suffix, overwrite=overwrite, bit_depth=bit_depth,
            raw_linear=raw_linear, raw_half_size=raw_half_size, max_megapixels=max_megapixels, strength=strength,
            focus=focus, mask=mask, save_blur_map=save_blur_map, report=html_report, dry_run=dry_run,
            antiring=antiring)
        info = runtime.DistInfo.from_env()
        engine_settings: dict = {}

        def make_deblurrer():
            from ..engine import Deblurrer

            n = threads or max(1, runtime.available_cores() // max(1, info.local_world_size))
            engine = Deblurrer(weights, device=runtime.device_for_rank(device, info), precision=precision, tile=tile,
                               overlap=overlap, threads=n, antiring=antiring)
            engine_settings.update(engine.describe())
            return engine

        show = not (quiet or json_out) and info.rank == 0
        info = runtime.join_group(info, backend="gloo",
                                  timeout=datetime.timedelta(hours=runtime.GATHER_TIMEOUT_HOURS))
        try:
            with stop_on_signals(at_once=True) as stop, \
                    Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TextColumn("eta"), TimeRemainingColumn(), console=err_console, transient=True,
                             disable=not show) as bars:
                report = batch.run_batch(inputs, opts, make_deblurrer, _RichProgress(bars), info,
                                         settings={"engine": engine_settings, "restore": opts.restore.describe()})
        except batch.BatchInterrupted as e:
            if info.rank == 0:
                done = sum(r.status == "done" for r in e.results)
                err_console.print(f"[yellow]interrupted[/]: {done} file(s) finished in this run, {e.left} left "
                                  "(the one in progress leaves nothing behind); run the same command again to "
                                  "resume", highlight=False, soft_wrap=True)
                if e.results and any(r.status == "failed" for r in e.results):
                    print_failures((r.input, r.reason) for r in e.results if r.status == "failed")
            raise typer.Exit(128 + (stop.signum or signal.SIGINT))
        finally:
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
                if report.failed and not dry_run and err_console.is_terminal:
                    err_console.print(_failures_table(report))
                elif report.failed and not dry_run:  # a log: one line per file, whole path (grep finds it)
                    print_failures((r.input, r.reason) for r in report.failed)
            elif report.failed:
                print_failures((r.input, r.reason) for r in report.failed)
        if report.failed or report.summary_error:
            raise typer.Exit(1)
