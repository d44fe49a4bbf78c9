"""Is bf16 autocast safe as the CPU default? PSNR between the bf16 and the fp32 output of the engine.

    python benchmarks/bf16_check.py [--weights W] [--tile 512] [--out benchmarks/bf16_check.md]

Runs :class:`cmddcli.engine.Deblurrer` with the given weights (default: the shipped ones) on every
real defocused photo under ../shared/samples/defocus (the blurred inputs: dpdd_1024/blur,
dpdd_gif_pairs/*_input.png, blurred_only/*), once in fp32 and once in bf16 (same tiles), and
reports PSNR(bf16 output, fp32 output) on the 8-bit outputs (speed: benchmarks/bench_cpu_speed.py). The rule:
bf16 becomes the CPU default only if this PSNR is >= 50 dB on every photo.
This is a numerical check of the precision, not a quality score: no photo's content decides anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


from cmddcli.engine import Deblurrer
from cmddcli.photo import read_photo

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "defocus"


def photos(root: Path) -> list:
    files = sorted((root / "dpdd_1024" / "blur").glob("*.png"))
    files += sorted((root / "dpdd_gif_pairs").glob("*_input.png"))
    files += sorted((root / "blurred_only").glob("*.jpg"))
    return files


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    qa = np.round(np.clip(a, 0, 1) * 255).astype(np.float64)
    qb = np.round(np.clip(b, 0, 1) * 255).astype(np.float64)
    mse = np.mean((qa - qb) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--samples", type=Path, default=SAMPLES)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    engines = {p: Deblurrer(args.weights, device="cpu", precision=p, tile=args.tile) for p in ("fp32", "bf16")}
    rows, worst = [], float("inf")
    for f in photos(args.samples):
        img = read_photo(f).rgb  # (H, W, 3) float32 in [0, 1]
        outs = {p: eng.restore(img) for p, eng in engines.items()}
        v = psnr8(outs["bf16"], outs["fp32"])
        gain = psnr8(outs["fp32"], img)
        worst = min(worst, v)
        rows.append(f"| {f.parent.name}/{f.name} | {img.shape[1]}x{img.shape[0]} | {v:.2f} | {gain:.2f} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        f"Weights: {engines['fp32'].weights_path}; tile {args.tile or 'auto'}; torch {torch.__version__}",
        "",
        "| photo | size | PSNR(bf16, fp32) dB | PSNR(fp32 out, input) dB |",
        "|---|---|---:|---:|",
        *rows,
        "",
        f"Worst PSNR(bf16, fp32): {worst:.2f} dB -> bf16 {'meets' if worst >= 50 else 'does NOT meet'} the 50 dB rule.",
    ])
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
