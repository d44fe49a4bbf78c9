"""`cmdd bench`: forward time per preset, size and scan backend (scan vs the rest)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import CmddError
from .common import (
    check_scan_names, device_option, err_console, handle_errors, json_option, out_console, print_json, setup_logging,
    weights_option)


def _parse_size(s: str, option: str = "--size") -> tuple:
    """``"WxH"`` (or one number for a square) -> (width, height) in pixels, as photos are named; a
    usage error naming ``option`` otherwise."""
    try:
        w, _, h = s.lower().partition("x")
        w, h = int(w), int(h or w)
    except ValueError:
        raise typer.BadParameter(f"must look like 256 or 1680x1120 (width x height), got {s!r}", param_hint=option)
    if w < 1 or h < 1:
        raise typer.BadParameter(f"must be at least 1x1 pixels, got {s!r}", param_hint=option)
    return w, h


def _items(values: Optional[List[str]]) -> List[str]:
    """Repeated options and comma lists alike: ``-p paper -p small`` == ``-p paper,small``."""
    return [x.strip() for v in values or [] for x in v.split(",") if x.strip()]


def register(app: typer.Typer) -> None:
    """Add ``cmdd bench`` to ``app``."""

    @app.command("bench")
    @handle_errors
    def bench(
        preset: Optional[List[str]] = typer.Option(
            None, "--preset", "-p", help="Model preset(s) to time: -p paper -p small or -p paper,small (default: paper)."),
        size: Optional[List[str]] = typer.Option(
            None, "--size", help="Input size(s): 256 or WxH; repeat or comma-separate (default: 256)."),
        device: Optional[str] = device_option(
            None, "cpu, cuda or cuda:N (default: cpu for the forward table, auto for --photo, as deblur)."),
        backend: Optional[List[str]] = typer.Option(
            None, "--backend", "--scan", "-b",
            help="Scan backend(s) to compare (repeat or comma-separate; --scan as in the other commands; auto: "
                 "the one deblur would pick); default: all usable here."),
        repeats: Optional[int] = typer.Option(
            None, min=1, help="Timed runs per row, median reported (default 3; --photo runs once per size)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the markdown table here."),
        json_out: bool = json_option("Print the rows as JSON on stdout."),
        photo: Optional[List[str]] = typer.Option(
            None, "--photo", help="Instead: time `cmdd deblur` end to end on a generated JPEG of this "
            "size (WxH, e.g. 4000x3000 for 12 MP) with the default weights (or --weights); reports seconds and peak memory."),
        weights: Optional[str] = weights_option("With --photo: the weights `cmdd deblur` uses (a file or a packaged "
                                                "name: v1, v2); default: the shipped default weights."),
    ):
        """Time whole-model forward passes split into selective scan and the rest, or (--photo) cmdd deblur end to end on a generated photo."""
        from ..atomic import atomic_path, check_writable
        from ..engine.bench import bench_forward, bench_photo, machine_line, photo_rows_to_markdown, rows_to_markdown
        from ..model import model_config
        from ..runtime import resolve_device

        setup_logging(quiet=json_out)
        # Everything that can be wrong with the arguments fails here, before minutes of timing.
        if weights is not None and not photo:
            raise CmddError("--weights applies to --photo only (the forward table times random-init presets)")
        if photo and (preset or size or backend or repeats):
            raise CmddError("--preset, --size, --scan and --repeats set up the forward table; --photo times cmdd "
                            "deblur once per size with the weights (--weights) and --device")
        if out is not None:
            check_writable(out, "table")
        device = str(resolve_device(device or ("auto" if photo else "cpu")))
        if photo:
            photo_sizes = [_parse_size(s, "--photo") for s in _items(photo)]
            rows = [bench_photo(w, h, weights=weights, args=("--device", device)) for w, h in photo_sizes]
            table = photo_rows_to_markdown(rows)
        else:
            sizes = [_parse_size(s)[::-1] for s in _items(size) or ["256"]]  # bench_forward takes (H, W)
            presets = _items(preset) or ["paper"]
            for p in presets:
                model_config(p)  # an unknown preset: one line now, not after the others' timings
            backends = check_scan_names(_items(backend), "--scan") or None
            rows = []
            for p in presets:
                try:
                    rows += bench_forward(p, sizes, device=device, backends=backends, repeats=repeats or 3)
                except Exception as e:  # noqa: BLE001 - only out-of-memory is turned into a one-line error
                    from ..engine.deblurrer import is_oom

                    if not is_oom(e):
                        raise
                    raise CmddError(f"--preset {p} --size {','.join(f'{w}x{h}' for h, w in sizes)}: out of memory "
                                    f"on {device} (a whole-image forward; try a smaller --size)") from None
            table = rows_to_markdown(rows)
        if json_out:
            print_json([dataclasses.asdict(r) for r in rows])
        else:
            out_console.print(table, markup=False, highlight=False, soft_wrap=True)  # markdown rows stay whole
        if out:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(out) as tmp:
                    tmp.write_text(f"Machine: {machine_line(device)}\n\n{table}\n")
            except OSError as e:  # e.g. a disk that filled up while timing: the table was printed above
                raise CmddError(f"{out}: cannot write the table ({e.strerror or e})")
            err_console.print(f"wrote {out}", markup=False, highlight=False)
