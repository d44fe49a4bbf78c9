"""`cmdd eval`: score a model on DPDD / RealDOF / any pairs, or score saved predictions."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ..errors import CmddError
from .common import (
    antiring_option, check_tile, device_option, err_console, handle_errors, json_option, precision_option, print_json,
    scan_option, setup_logging, threads_option, tile_option, weights_option)
from ..engine.options import DEFAULT_OVERLAP

_FORMATS = {"psnr": "{:.2f}", "ssim": "{:.3f}", "mae": "{:.4f}", "psnr_cf": "{:.2f}", "lpips": "{:.4f}"}
_HEADERS = {"psnr": "PSNR", "ssim": "SSIM", "mae": "MAE", "psnr_cf": "PSNR-cf", "lpips": "LPIPS"}
_GAIN_HEADERS = {"psnr": "gain", "psnr_cf": "gain-cf"}


def _table(report) -> Table:
    t = Table(title="cmdd eval (PSNR in dB; gain = model - input)", title_style="bold", show_lines=False,
              box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    t.add_column("set", overflow="fold", min_width=5)
    t.add_column("subset", no_wrap=True)
    t.add_column("images", justify="right", no_wrap=True)
    for m in report.metrics:
        t.add_column(_HEADERS[m], justify="right", no_wrap=True)
    gains = [m for m in _GAIN_HEADERS if m in report.metrics] if any(
        s.input_means is not None for s in report.summary) else []
    for m in gains:
        t.add_column(_GAIN_HEADERS[m], justify="right", no_wrap=True)
    identical = any(s.identical for s in report.summary)
    if identical:
        t.add_column("identical", justify="right")  # infinite PSNR, left out of the PSNR mean
    for s in report.summary:
        style = "bold" if s is report.summary[-1] else None
        cells = ["-" if s.means[m] is None else _FORMATS[m].format(s.means[m]) for m in report.metrics]
        if gains:
            cells += ["-" if s.gain(m) is None else f"{s.gain(m):+.2f}" for m in gains]
        t.add_row(s.group, s.subset, str(s.count), *cells, *([str(s.identical)] if identical else []), style=style)
    return t


def register(app: typer.Typer) -> None:
    """Add ``cmdd eval`` to ``app``."""

    @app.command("eval")
    @handle_errors
    def eval_cmd(
        weights: Optional[Path] = weights_option("Weights to evaluate: a .safetensors file or a packaged name (v1, ...); default: the shipped weights."),
        data: List[str] = typer.Option(
            [], "--data", "-d",
            help="DPDD tree, RealDOF tree, manifest JSON, a source/+target/ (or blur/+sharp/) folder, or a folder "
                 "of NAME_input + NAME_gt files (repeatable)."),
        split: str = typer.Option("test", "--split", help="Split to score in a DPDD tree or manifest."),
        pred: List[str] = typer.Option(
            [], "--pred",
            help="Saved predictions: folder, file or glob with one '*' (repeatable; pairs with --target "
                 "or --data in order)."),
        target: List[str] = typer.Option(
            [], "--target", "-t", help="Targets for --pred: folder, file or glob (matched by stem / '*')."),
        pred_suffix: str = typer.Option(
            "", "--pred-suffix", help="Suffix to strip from prediction stems (e.g. _deblurred)."),
        crop_top: List[int] = typer.Option(
            [], "--crop-top", min=0, help="Drop the top N rows before scoring (once for all sets, or once per set)."),
        mask: Optional[Path] = typer.Option(
            None, "--mask", help="Score only the non-zero pixels of this mask image (same size as the images)."),
        metrics: str = typer.Option(
            "psnr,ssim,mae,psnr_cf", "--metrics", "-m",
            help="Comma list: psnr, ssim, mae (published), psnr_cf (colour-fair PSNR: per-channel least-squares "
                 "gain and offset of the prediction to the target, then PSNR), lpips."),
        ssim_window: str = typer.Option(
            "uniform", "--ssim", help="SSIM window: uniform (7x7, the published numbers) or gaussian (11x11, s=1.5)."),
        bits: int = typer.Option(8, "--bits", "--bit-depth", help="8 (published protocol: 16-bit files read as 8-bit) or 16."),
        tile: int = tile_option(0, "Tile size for the network (0 = whole image, the protocol)."),
        antiring: str = antiring_option(),
        device: str = device_option(),
        precision: str = precision_option("fp32", "fp32 (protocol), bf16, fp16 or auto."),
        threads: Optional[int] = threads_option(),
        limit: int = typer.Option(0, "--limit", min=0, help="Score only the first N images of each set (0 = all)."),
        out: Optional[Path] = typer.Option(
            None, "--out", "-o", help="Write per_image.csv and summary.json (and images) here."),
        save_images: bool = typer.Option(False, "--save-images", help="Save restored images under OUT/images/."),
        json_out: bool = json_option(),
        scan: Optional[str] = scan_option(),
    ):
        """Score a model on DPDD / RealDOF / any pairs with the published protocol, or score saved predictions.

        Examples:

          cmdd eval --weights w.safetensors --data Datasets/ --out results/dpdd

          cmdd eval --pred restored/ --data dd_dp_dataset_canon/   (indoor / outdoor / combined)

          cmdd eval --pred dpdd_1024/blur --target dpdd_1024/sharp --crop-top 0 \\
                    --pred 'gif/*_input.png' --target 'gif/*_gt.png' --crop-top 48
        """
        from ..atomic import ensure_output_dir
        from ..eval import protocol as E

        setup_logging(quiet=json_out)
        check_tile(tile, DEFAULT_OVERLAP)
        settings = E.EvalSettings(metrics=metrics, bits=bits, ssim_window=ssim_window,
                                  mask=str(mask) if mask else None, tile=tile, precision=precision, device=device,
                                  antiring=antiring)
        if save_images and out is None:
            raise CmddError("--save-images needs --out DIR")
        items = E.gather_items(data=data, pred=pred, target=target, split=split, pred_suffix=pred_suffix,
                               crop_top=crop_top, limit=limit, with_weights=weights is not None)
        if out is not None:  # before minutes of scoring, not after
            ensure_output_dir(out, "--out")

        with Progress(TextColumn("[bold]eval[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.description}"), console=err_console, transient=True,
                      disable=json_out and not err_console.is_terminal) as bar:
            task = bar.add_task("", total=len(items))

            def progress(done: int, total: int, name: str) -> None:
                bar.update(task, completed=done, description=name)

            report = E.run_eval(items, settings, weights=weights,
                                save_dir=(out / "images") if save_images else None, progress=progress,
                                threads=threads)
        write_error = None
        if out is not None:
            try:
                paths = report.write(out)
                report.extra["files"] = {k: str(v) for k, v in paths.items()}
            except OSError as e:  # e.g. a full disk: the report is still shown, then exit 1
                write_error = f"cannot write {out / 'per_image.csv'} / {out / 'summary.json'} ({e.strerror or e})"
                report.extra["write_error"] = write_error
        if json_out:
            print_json(report.to_json())
        else:
            err_console.print(_table(report))
            if out is not None and write_error is None:
                err_console.print(f"wrote {out / 'per_image.csv'} and {out / 'summary.json'}", markup=False,
                                  highlight=False)
        if write_error:
            err_console.print(f"[red]error:[/] {escape(write_error)}", highlight=False, soft_wrap=True)
        if write_error or report.extra.get("save_errors"):
            raise typer.Exit(1)
