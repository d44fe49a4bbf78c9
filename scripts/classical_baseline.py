"""Classical deconvolution baseline on the real DPDD test pairs.

Wiener and Richardson-Lucy (scikit-image) with a uniform disk PSF whose radius is estimated from
the *blurred image alone* (no target): a disk PSF's transfer function 2*J1(2*pi*R*f)/(2*pi*R*f)
has its first zero at f0 = 0.6098 / R cycles/px, so we look for the first dip of the whitened,
radially averaged log power spectrum and set R = 0.6098 / f0. Defocus in these photos is
spatially varying (only part of each frame is blurred), so one global radius is a rough guess --
that is the point of a classical baseline.

    python scripts/classical_baseline.py --out benchmarks/classical_baseline.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter1d
from skimage.restoration import richardson_lucy, wiener

from cmddcli.eval.protocol import load_for_eval
from cmddcli.eval.metrics import mae, psnr, ssim

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "defocus"


def disk_psf(radius: float) -> np.ndarray:
    r = max(radius, 0.5)
    n = int(np.ceil(r)) * 2 + 1
    yy, xx = np.mgrid[:n, :n] - n // 2
    k = np.clip(r - np.sqrt(xx**2 + yy**2) + 0.5, 0, 1)  # anti-aliased rim
    return k / k.sum()


def estimate_radius(img: np.ndarray, r_min: float = 1.0, r_max: float = 12.0) -> float:
    """Blur radius from the first zero of the disk OTF in the image's own spectrum."""
    g = img.mean(axis=2) if img.ndim == 3 else img
    g = g - g.mean()
    win = np.outer(np.hanning(g.shape[0]), np.hanning(g.shape[1]))
    P = np.abs(np.fft.fftshift(np.fft.fft2(g * win))) ** 2
    h, w = P.shape
    fy = (np.arange(h) - h // 2) / h
    fx = (np.arange(w) - w // 2) / w
    rho = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    bins = np.linspace(0, 0.5, 257)
    idx = np.digitize(rho.ravel(), bins) - 1
    ok = (idx >= 0) & (idx < 256)
    prof = np.bincount(idx[ok], weights=np.log(P.ravel()[ok] + 1e-12), minlength=256) / np.maximum(
        np.bincount(idx[ok], minlength=256), 1
    )
    f = 0.5 * (bins[:-1] + bins[1:])
    white = prof + 2 * np.log(np.maximum(f, 1e-3))  # natural images fall as 1/f^2: whiten
    white = uniform_filter1d(white, 5)
    lo, hi = 0.6098 / r_max, 0.6098 / r_min
    band = np.where((f >= lo) & (f <= hi))[0]
    for i in band[1:-1]:
        if white[i] < white[i - 1] and white[i] <= white[i + 1] and white[i] < np.median(white[band]):
            return float(0.6098 / f[i])
    return 2.0


def restore(img: np.ndarray, radius: float, method: str) -> np.ndarray:
    psf = disk_psf(radius)
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        if method == "wiener":
            out[..., c] = wiener(img[..., c], psf, balance=0.05, clip=False)
        else:
            out[..., c] = richardson_lucy(img[..., c], psf, num_iter=15, clip=False)
    return np.clip(out, 0, 1)


def pairs():
    d = SAMPLES / "dpdd_1024"
    for p in sorted((d / "blur").glob("*.png")):
        yield p.stem, p, d / "sharp" / p.name, 0
    g = SAMPLES / "dpdd_gif_pairs"
    for p in sorted(g.glob("*_input.png")):
        yield p.stem.replace("_input", ""), p, g / p.name.replace("_input", "_gt"), 48


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the markdown table here (and .json beside it)")
    args = ap.parse_args()
    rows = []
    for name, src, tgt, crop in pairs():
        x = load_for_eval(src, bits=8)[crop:]
        y = load_for_eval(tgt, bits=8)[crop:]
        r = estimate_radius(x)
        row = {"image": name, "radius": r}
        for method, pred in (("input", x), ("wiener", restore(x, r, "wiener")), ("rl", restore(x, r, "rl"))):
            row[method] = {"psnr": psnr(pred, y), "ssim": ssim(pred, y), "mae": mae(pred, y)}
        rows.append(row)
        print(name, f"R={r:.2f}", {k: round(v["psnr"], 2) for k, v in row.items() if isinstance(v, dict)}, flush=True)
    lines = [
        "| image | est. radius px | input PSNR / SSIM / MAE | Wiener | Richardson-Lucy (15 it.) |",
        "|---|---:|---|---|---|",
    ]
    fmt = lambda m: f"{m['psnr']:.2f} / {m['ssim']:.3f} / {m['mae']:.4f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['image']} | {r['radius']:.2f} | {fmt(r['input'])} | {fmt(r['wiener'])} | {fmt(r['rl'])} |")
    mean = {m: {k: float(np.mean([r[m][k] for r in rows])) for k in ("psnr", "ssim", "mae")} for m in ("input", "wiener", "rl")}
    lines.append(f"| **mean** | | {fmt(mean['input'])} | {fmt(mean['wiener'])} | {fmt(mean['rl'])} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "mean": mean}, indent=2))


if __name__ == "__main__":
    main()
