"""`cmdd prepare`: turn datasets on disk into manifests (and training crops) for train / eval."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .common import err_console, handle_errors, json_option, print_failures, print_json, quiet_option, setup_logging

prepare_app = typer.Typer(
    name="prepare",
    help="Prepare datasets: DPDD / RealDOF / any source+target folder → manifest (+ crops), "
         "or synthesise defocus pairs.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

# Options shared by several commands (declared once).
OUT = typer.Option(..., "-o", "--out", help="Output folder (manifest.json, crops, records for resuming).")
WORKERS = typer.Option(None, "--workers", "-j", min=1, help="Worker processes (default: CPU count, at most 8).")
JSON = json_option("Print the result as JSON on stdout (progress and logs stay on stderr).")
QUIET = quiet_option("No progress bar, warnings only.")
WINDOW = typer.Option(512, "--window", min=1, help="Crop window size in pixels (paper: 512).")
OVERLAP = typer.Option(0.6, "--overlap", min=0.0, max=0.99, metavar="FRACTION",
                       help="Window overlap as a fraction of the window (paper: 0.6, stride 204; cmdd deblur's --overlap is in px).")
STRIDE = typer.Option(None, "--stride", min=1, help="Window stride in pixels (overrides --overlap).")
FLIPS = typer.Option("hv", "--flips", help="Flipped copies saved for the train split: hv, h, v or none.")
DROP = typer.Option(0.0, "--drop-blurry", min=0.0, max=0.99,
                    help="Drop this fraction of least-sharp windows per image (DPDNet/Restormer scripts: 0.3).")


def _flips(value: str) -> tuple[str, ...]:
    v = value.strip().lower()
    return () if v in ("", "none", "no", "0") else tuple(dict.fromkeys(c for c in v if c not in ", "))


def _workers(n: Optional[int]) -> int:
    from ..data.prepare import default_workers

    return n or default_workers()


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator:
    if not enabled:
        yield None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _report(result, as_json: bool) -> None:
    if as_json:
        print_json(result.to_json())
        return
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    err_console.print(f"[green]wrote[/] {escape(str(result.manifest_path))}  ({result.dataset}: {counts}; "
                      f"{result.written} files written, {result.kept} reused)", highlight=False)


def _run(label: str, quiet: bool, as_json: bool, prepare: Callable, show_notes: bool = False) -> None:
    """``prepare(progress)`` under a progress bar (unless ``quiet``), then its notes and result."""
    with _progress(label, not quiet) as progress:
        result = prepare(progress)
    if show_notes:
        for note in result.notes:
            err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    _report(result, as_json)
    if result.failed:  # the run went on past them; listed at the end, exit 1 as deblur does
        print_failures((f["path"], f["reason"]) for f in result.failed)
        err_console.print(f"{len(result.failed)} file(s) could not be used", highlight=False)
        raise typer.Exit(1)


@prepare_app.command("dpdd")
@handle_errors
def dpdd(
    root: Path = typer.Argument(..., help="dd_dp_dataset_canon (or its parent), or Restormer's Datasets folder."),
    out: Path = OUT,
    splits: str = typer.Option("train,val,test", "--splits", help="Comma-separated splits to prepare."),
    window: int = WINDOW,
    overlap: float = OVERLAP,
    stride: Optional[int] = STRIDE,
    flips: str = FLIPS,
    drop_blurry: float = DROP,
    val_crops: bool = typer.Option(True, "--val-crops/--val-full",
                                   help="Validation: the train windows without flips (default), or full images."),
    workers: Optional[int] = WORKERS,
    json_out: bool = JSON,
    quiet: bool = QUIET,
):
    """DPDD: crop train (and val) as the paper does, list test with indoor/outdoor subsets."""
    from ..data.prepare import prepare_dpdd

    setup_logging(quiet=quiet)
    _run("cropping DPDD", quiet, json_out, lambda progress: prepare_dpdd(
        root, out, splits=tuple(s.strip() for s in splits.split(",") if s.strip()), window=window,
        overlap_fraction=overlap, stride=stride, flips=_flips(flips), drop_blurry=drop_blurry, val_crops=val_crops,
        workers=_workers(workers), progress=progress))


@prepare_app.command("realdof")
@handle_errors
def realdof(
    root: Path = typer.Argument(..., help="RealDOF folder (with source/ and target/) or its parent."),
    out: Path = OUT,
    workers: Optional[int] = WORKERS,
    json_out: bool = JSON,
    quiet: bool = QUIET,
):
    """RealDOF (test only): list the 50 pairs with sizes and checksums."""
    from ..data.prepare import prepare_realdof

    setup_logging(quiet=quiet)
    _run("hashing RealDOF", quiet, json_out,
         lambda progress: prepare_realdof(root, out, workers=_workers(workers), progress=progress))


@prepare_app.command("pairs")
@handle_errors
def pairs(
    root: Path = typer.Argument(..., help="A folder with source/ and target/ (or blur/ and sharp/, or train|val|test/source,target), "
                                             "or of NAME_input + NAME_gt files."),
    out: Path = OUT,
    split: str = typer.Option("test", "--split", help="Split name for a single source/target folder."),
    crop: bool = typer.Option(False, "--crop", help="Crop the train split into windows (val without flips)."),
    window: int = WINDOW,
    overlap: float = OVERLAP,
    stride: Optional[int] = STRIDE,
    flips: str = FLIPS,
    drop_blurry: float = DROP,
    workers: Optional[int] = WORKERS,
    json_out: bool = JSON,
    quiet: bool = QUIET,
):
    """Any blurred/sharp folder pair, matched by file stem."""
    from ..data.prepare import prepare_pairs

    setup_logging(quiet=quiet)
    _run("preparing pairs", quiet, json_out, lambda progress: prepare_pairs(
        root, out, split=split, crop=crop, window=window, overlap_fraction=overlap, stride=stride, flips=_flips(flips),
        drop_blurry=drop_blurry, workers=_workers(workers), progress=progress))


def _range(text: str, name: str, cast=float, lo: float = 0, hi: float = float("inf")) -> tuple:
    """``"LO,HI"`` (or one value) -> (LO, HI) with lo <= LO <= HI <= hi; else InputError naming the option."""
    from ..errors import InputError

    try:
        parts = [cast(p) for p in text.replace(":", ",").split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(math.isfinite(p) for p in parts):
        raise InputError(name, f"expected LO,HI (or one value), finite numbers, got {text!r}")
    if parts[0] > parts[1]:
        raise InputError(name, f"LO must not exceed HI, got {text!r}")
    if parts[0] < lo or parts[1] > hi:
        raise InputError(name, f"values must be within {lo:g}..{hi:g}, got {text!r}")
    return tuple(parts)


@prepare_app.command("synth")
@handle_errors
def synth(
    sharp_dir: Path = typer.Argument(..., help="Folder of sharp photographs (searched recursively)."),
    out: Path = OUT,
    count: int = typer.Option(1000, "--count", "-n", min=1, help="Number of pairs."),
    size: int = typer.Option(256, "--size", min=32, help="Patch size (a multiple of 32)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed and inputs give the same bytes."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=0.9,
                                       help="Share of photographs (and pairs) kept for validation."),
    bits: int = typer.Option(8, "--bits", "--bit-depth", help="PNG bit depth of the pairs: 8 or 16 (depth maps are 16)."),
    max_coc: str = typer.Option("2,16", "--max-coc", help="Largest CoC radius per image in px, LO,HI."),
    depth: str = typer.Option("mixed", "--depth", help="Depth maps: layers, planes, blobs, segments (layer outlines follow image segments) or mixed."),
    soft_edge: float = typer.Option(0.0, "--soft-edge", min=0.0, help="Extra softness of the disk rim in px."),
    noise: float = typer.Option(0.0, "--noise", min=0.0, max=1.0, help="Probability of Poisson-Gaussian noise."),
    jpeg: float = typer.Option(0.0, "--jpeg", min=0.0, max=1.0, help="Probability of a JPEG round trip."),
    jpeg_quality: str = typer.Option("75,95", "--jpeg-quality", help="JPEG quality range LO,HI."),
    save_depth: bool = typer.Option(True, "--depth-maps/--no-depth-maps", help="Also save the disparity maps."),
    max_side: int = typer.Option(1600, "--max-side", min=64, help="Downscale photographs to this longer side first."),
    min_sharpness: float = typer.Option(0.015, "--min-sharpness", min=0.0,
                                        help="Laplacian std a 32px block needs to count as sharp."),
    min_sharp_fraction: float = typer.Option(0.7, "--min-sharp-fraction", min=0.0, max=1.0,
                                             help="Share of sharp blocks a tile needs to be used."),
    workers: Optional[int] = WORKERS,
    json_out: bool = JSON,
    quiet: bool = QUIET,
):
    """Synthesise spatially varying defocus (depth layers, disk PSF, linear light) from sharp photos."""
    from ..data.prepare import prepare_synth
    from ..data.sources import SharpnessFilter
    from ..data.synth import DEPTH_MODES, SynthConfig
    from ..errors import InputError

    setup_logging(quiet=quiet)
    if depth not in DEPTH_MODES:
        raise InputError("--depth", f"must be one of {', '.join(DEPTH_MODES)}")
    try:
        config = SynthConfig(max_coc=_range(max_coc, "--max-coc", float, 0.0), depth=depth, soft_edge=soft_edge, noise_prob=noise,
                             jpeg_prob=jpeg, jpeg_quality=_range(jpeg_quality, "--jpeg-quality", int, 1, 100))
    except ValueError as e:
        raise InputError("--max-coc", str(e)) from e
    filt = SharpnessFilter(threshold=min_sharpness, min_fraction=min_sharp_fraction)
    _run("synthesising", quiet, json_out, lambda progress: prepare_synth(
        sharp_dir, out, count=count, patch=size, seed=seed, val_fraction=val_fraction, config=config, bits=bits,
        save_depth=save_depth, max_side=max_side, filt=filt, workers=_workers(workers), progress=progress),
        show_notes=True)


def register(app: typer.Typer) -> None:
    """Add ``cmdd prepare`` to ``app``."""
    app.add_typer(prepare_app, name="prepare")
