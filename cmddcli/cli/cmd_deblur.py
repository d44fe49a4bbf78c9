"""`cmdd deblur`: deblur photos, folders of photos and camera RAW files."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import CmddError
from .common import err_console, handle_errors, print_json, setup_logging

_EXTS = ("png", "tif", "tiff", "jpg", "jpeg", "webp")


class _RichProgress:
    """Files and tiles bars on stderr (implements cmddcli.batch.BatchProgress)."""

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
        action = {"planned": "[cyan]deblur[/]", "skipped": "[yellow]skip (exists)[/]"}.get(
            r.status, f"[red]fail: {escape(r.reason)}[/]")
        t.add_row(escape(r.input), escape(r.output or ""), action)
    return t


def _device_for_rank(device: str, info) -> str:
    """Under torchrun each rank takes cuda:LOCAL_RANK (when CUDA is there and no index was given)."""
    if not info.distributed or device.lower() not in ("auto", "cuda"):
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{info.local_rank % torch.cuda.device_count()}"
    return "cpu" if device.lower() == "auto" else device


def register(app: typer.Typer) -> None:
    @app.command("deblur")
    @handle_errors
    def deblur_cmd(
        inputs: List[str] = typer.Argument(..., help="Image files, folders or glob patterns ('*.NEF')."),
        output: Path = typer.Option(..., "--output", "-o", help="Output folder (the input tree is mirrored here)."),
        recursive: bool = typer.Option(False, "--recursive", "-r", help="Walk sub-folders of folder inputs."),
        ext: Optional[str] = typer.Option(
            None, "--ext", help="Output format: png, tif, jpg or webp (default: the input's; RAW -> 16-bit tif)."),
        suffix: str = typer.Option("", "--suffix", help="Appended to output file stems, e.g. _sharp."),
        bit_depth: Optional[int] = typer.Option(
            None, "--bit-depth", help="8 or 16 bits per sample (default: the input's; JPEG/WebP are 8)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Redo files whose output exists (default: skip)."),
        raw_linear: bool = typer.Option(False, "--raw-linear", help="Develop RAW with linear gamma (1, 1)."),
        raw_half_size: bool = typer.Option(False, "--raw-half-size", help="Develop RAW at half size (faster)."),
        weights: Optional[Path] = typer.Option(
            None, "--weights", "-w", help="Weights (.safetensors); default: the shipped weights."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16."),
        tile: Optional[int] = typer.Option(
            None, "--tile", help="Tile size in pixels (default: from free memory; 0 = whole image)."),
        overlap: int = typer.Option(64, "--overlap", help="Overlap between tiles in pixels."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be done."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables; warnings only."),
        json_out: bool = typer.Option(False, "--json", help="Print the JSON summary on stdout (nothing else)."),
    ):
        """Remove defocus blur from photos: JPEG, PNG, TIFF, WebP and camera RAW (DNG, NEF, CR2, ARW, ...).

        Existing outputs are skipped (an interrupted run resumes); any failed file makes the exit code 1.
        """
        from .. import batch
        from ..photo import RawSettings

        setup_logging(quiet=quiet or json_out)
        if ext is not None and ext.lower().lstrip(".") not in _EXTS:
            raise CmddError(f"--ext must be one of png, tif, jpg, webp (got {ext!r})")
        if bit_depth not in (None, 8, 16):
            raise CmddError(f"--bit-depth must be 8 or 16 (got {bit_depth})")
        info = batch.DistInfo.from_env()
        opts = batch.BatchOptions(
            out_dir=output, recursive=recursive, ext=ext.lower().lstrip(".") if ext else None, suffix=suffix,
            overwrite=overwrite, bit_depth=bit_depth, raw=RawSettings(linear=raw_linear, half_size=raw_half_size),
            dry_run=dry_run,
        )
        engine_settings: dict = {}

        def make_deblurrer():
            from ..engine import Deblurrer
            from ..engine.deblurrer import available_cores

            threads = max(1, available_cores() // max(1, info.local_world_size))
            engine = Deblurrer(weights, device=_device_for_rank(device, info), precision=precision,
                               tile=tile, overlap=overlap, threads=threads)
            engine_settings.update(engine.describe())
            return engine

        show = not (quiet or json_out) and info.rank == 0
        created_group = batch.init_distributed(info)
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=err_console, transient=True, disable=not show) as bars:
                report = batch.run_batch(inputs, opts, make_deblurrer, _RichProgress(bars), info,
                                         settings={"engine": engine_settings})
        finally:
            if created_group:
                import torch.distributed as dist

                dist.destroy_process_group()

        if info.rank == 0:
            if json_out:
                print_json(report.to_dict())
            elif not quiet:
                err_console.print(_plan_table(report) if dry_run else _summary_table(report))
                if report.failed and not dry_run:
                    err_console.print(_failures_table(report))
            elif report.failed:
                for r in report.failed:
                    err_console.print(f"[red]failed:[/] {escape(r.input)}: {escape(r.reason)}", highlight=False)
        if report.failed:
            raise typer.Exit(1)
