"""Tile overlap on CPU: time and seam error against the whole-image output, on real validation photos.

    python benchmarks/bench_overlap.py [--weights W] [--images 6] [--overlaps 64,32,24,16]

Runs :class:`cmddcli.engine.Deblurrer` (bf16, default CPU tiles) on the first ``--images`` blurred
photos of ``../shared/samples/defocus/dpdd_1024`` (the validation set) with each overlap, and
reports the wall time, PSNR of the tiled output against the whole-image output (``tile=0``; mean
and worst photo), the largest difference from it in 8-bit levels, and PSNR against the sharp
targets. Take it on a quiet machine (pause other jobs with ``kill -STOP``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


from cmddcli.engine import Deblurrer
from cmddcli.eval.metrics import psnr
from cmddcli.eval.protocol import load_for_eval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="weights file (default: the shipped ones)")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--overlaps", default="64,32,24,16")
    ap.add_argument("--root", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared" / "samples" / "defocus" / "dpdd_1024")
    args = ap.parse_args()
    files = sorted((args.root / "blur").glob("*.png"))[: args.images]
    if not files:
        sys.exit(f"no photos under {args.root / 'blur'}")
    imgs = [load_for_eval(f) for f in files]
    targets = [load_for_eval(args.root / "sharp" / f.name) for f in files]
    whole = [Deblurrer(weights=args.weights, device="cpu", precision="bf16", tile=0).restore(x) for x in imgs]
    print(f"{len(files)} photos; whole image: {np.mean([psnr(w, y) for w, y in zip(whole, targets)]):.3f} dB "
          "against the targets\n")
    print("| overlap px | tile | seconds | PSNR vs whole-image output: mean | worst photo | max difference, 8-bit levels "
          "| PSNR vs targets |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for ov in (int(v) for v in args.overlaps.split(",")):
        eng = Deblurrer(weights=args.weights, device="cpu", precision="bf16", overlap=ov)
        t0 = time.perf_counter()
        outs = [eng.restore(x) for x in imgs]
        dt = time.perf_counter() - t0
        tile = eng.plan(*imgs[0].shape[:2])[0]
        seam = [psnr(o, w) for o, w in zip(outs, whole)]
        worst = max(float(np.abs(o - w).max()) for o, w in zip(outs, whole)) * 255
        print(f"| {ov} | {tile} | {dt:.1f} | {np.mean(seam):.2f} | {min(seam):.2f} | {worst:.2f} | "
              f"{np.mean([psnr(o, y) for o, y in zip(outs, targets)]):.3f} |", flush=True)


if __name__ == "__main__":
    main()
