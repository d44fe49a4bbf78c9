"""Where the error of a deblurring is: PSNR, PSNR after a per-channel colour fit, and the error split
into a low-pass (Gaussian, sigma 8 px) and a high-pass part, per image and method.

    python scripts/residual_analysis.py ../shared/samples/defocus/dpdd_1024 v1=out_v1/ v2=out_v2/

PAIRS holds blur/ and sharp/ (same names); each NAME=DIR holds a method's outputs under the same
names (e.g. from `cmdd deblur PAIRS/blur -o DIR --weights W`); the input itself is always the first
method. The colour fit (least-squares gain and offset per channel, output onto target) measures how
much of the error is exposure/colour difference between the two shots rather than blur. Columns
are PSNR figures (cmddcli.eval.metrics.psnr) of each part against zero, images read as
`cmdd eval` reads them (8-bit, [0, 1]).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from cmddcli.eval.metrics import psnr
from cmddcli.eval.protocol import load_for_eval


def _colour_fit(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for c in range(x.shape[-1]):
        a = np.stack([x[..., c].ravel(), np.ones(x[..., c].size)], 1)
        g, o = np.linalg.lstsq(a, t[..., c].ravel(), rcond=None)[0]
        out[..., c] = g * x[..., c] + o
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", type=Path)
    ap.add_argument("methods", nargs="*", help="NAME=DIR")
    ap.add_argument("--sigma", type=float, default=8.0, help="low-pass Gaussian sigma, pixels")
    args = ap.parse_args()
    methods = [("input", args.pairs / "blur")] + [(m.split("=", 1)[0], Path(m.split("=", 1)[1])) for m in args.methods]
    cols = ["PSNR", "colour-fit PSNR", "low-pass", "high-pass"]
    print("| image | method | " + " | ".join(cols) + " |")
    print("|---|---|" + "---:|" * len(cols))
    sums: dict[str, np.ndarray] = {}
    names = sorted(p.name for p in (args.pairs / "blur").iterdir())
    for name in names:
        t = load_for_eval(args.pairs / "sharp" / name)
        for label, folder in methods:
            y = load_for_eval(folder / name)
            e = y - t
            lo = np.stack([gaussian_filter(e[..., c], args.sigma) for c in range(e.shape[-1])], -1)
            zero = np.zeros_like(e)
            row = np.array([psnr(y, t), psnr(_colour_fit(y, t), t), psnr(lo, zero), psnr(e - lo, zero)])
            sums[label] = sums.get(label, 0) + row
            print(f"| {name} | {label} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    for label, _ in methods:
        print(f"| mean | {label} | " + " | ".join(f"{v:.2f}" for v in sums[label] / len(names)) + " |")


if __name__ == "__main__":
    main()
