"""Blur sizes of defocus pairs: per tile, the disk radius that best maps the sharp image onto the blurred one.

    python scripts/blur_size_fit.py --data ../shared/samples/defocus/dpdd_1024        # real pairs
    python scripts/blur_size_fit.py --config training/wide_n4.toml [--synth v1_jpeg]  # a run's training pairs

For every ``--tile`` square (default 48 px) the sharp image is blurred in linear light with the
synthesiser's disk PSF (:func:`cmddcli.data.synth.disk_kernel`) at each radius of ``RADII`` (px), a
per-channel gain and offset is fitted from it to the blurred image (the f/4 and f/22 shots of DPDD
differ a little in exposure), and the radius with the smallest residual is the tile's. Tiles whose
sharp image holds little detail (below the 30th percentile of the set's high-pass energy) say nothing
about the blur and are left out. The histogram over the kept tiles is printed (share of tiles per
radius), with the median and the share at >= 10 px.

This compares the blur sizes the network is trained on with those of real pairs *under the same
estimator* (its biases cancel): a crude fit (one disk per tile, no depth edges inside a tile), not a
measurement of the lens. ``--config`` draws ``--count`` training pairs exactly as that run's data
source does (sharp tiles, crop size, synth preset; ``--synth`` replaces the preset) with noise and
JPEG switched off, which would disturb the fit. Use validation pairs only for ``--data``.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F


from cmddcli.data.synth import disk_kernel, srgb_to_linear
from cmddcli.errors import CmddError, run_script

RADII = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 14.0, 16.0, 20.0, 24.0)
TEXTURE_PERCENTILE = 30


def disk_blur(image: np.ndarray, radius: float) -> np.ndarray:
    """(H, W, C) float image convolved with the anti-aliased disk of ``radius`` px (edges replicated)."""
    if radius < 0.5:
        return image
    k = torch.from_numpy(disk_kernel(radius)).float()[None, None]
    p = k.shape[-1] // 2
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[:, None]
    x = F.pad(x, (p, p, p, p), mode="replicate")
    return F.conv2d(x, k)[:, 0].permute(1, 2, 0).numpy()


def _tiles(a: np.ndarray, t: int) -> np.ndarray:
    """(H, W, C) -> (n_tiles, t*t, C), tiles in row-major order (a partial last row/column is dropped)."""
    h, w, c = a.shape
    a = a[: h // t * t, : w // t * t]
    return a.reshape(h // t, t, w // t, t, c).swapaxes(1, 2).reshape(-1, t * t, c)


def fit_radii(blurred: np.ndarray, sharp: np.ndarray, tile: int = 48,
              radii: tuple[float, ...] = RADII) -> tuple[np.ndarray, np.ndarray]:
    """Per tile, the disk radius (px) that best explains ``blurred`` from ``sharp``, and the tile's detail.

    Args: two (H, W, 3) sRGB float arrays in [0, 1], the same size, each side >= ``tile``.
    Returns: (radius, detail), each (n_tiles,): the best radius of ``radii`` after a per-channel
    least-squares gain and offset, and the RMS of the sharp tile's high-pass (sharp minus its 2 px disk
    blur) in linear light.
    Raises: ValueError for mismatched shapes or images smaller than a tile.
    """
    if blurred.shape != sharp.shape or blurred.ndim != 3 or min(blurred.shape[:2]) < tile:
        raise ValueError(f"need two (H, W, 3) images of one size, each side >= {tile}: {blurred.shape}, {sharp.shape}")
    b, s = srgb_to_linear(blurred).astype(np.float64), srgb_to_linear(sharp).astype(np.float64)
    y = _tiles(b, tile)
    y = y - y.mean(1, keepdims=True)
    residual = []
    for r in radii:
        x = _tiles(disk_blur(s, r).astype(np.float64), tile)
        x = x - x.mean(1, keepdims=True)
        vx, vy, cxy = (x * x).mean(1), (y * y).mean(1), (x * y).mean(1)
        # least squares y ~ g*x + o per channel: residual variance vy - cxy^2 / vx
        res = vy - np.where(vx > 1e-12, cxy ** 2 / np.maximum(vx, 1e-12), 0.0)
        residual.append(res.sum(1))
    best = np.asarray(radii)[np.argmin(np.stack(residual), 0)]
    detail = np.sqrt((_tiles(s - disk_blur(s, 2.0), tile) ** 2).mean((1, 2)))
    return best, detail


def summarise(radius: np.ndarray, detail: np.ndarray, radii: tuple[float, ...] = RADII) -> dict:
    """Histogram of the textured tiles' radii: {"tiles", "median", "share_ge_10", "hist": {r: share}}."""
    kept = radius[detail > np.percentile(detail, TEXTURE_PERCENTILE)]
    return {"tiles": int(kept.size), "median": float(np.median(kept)),
            "share_ge_10": float(np.mean(kept >= 10)),
            "hist": {r: float(np.mean(kept == r)) for r in radii}}


def _real_pairs(folders: list[str]):
    from cmddcli.eval.protocol import gather_items, load_for_eval

    for it in gather_items(data=folders):
        yield it.name, load_for_eval(it.source), load_for_eval(it.target)


def _training_pairs(config: str, synth: str | None, count: int, seed: int):
    from cmddcli.train.data import ConfigDataSource
    from cmddcli.train.overrides import load_config

    cfg = load_config(config)
    if synth:
        cfg.data.synth = synth
    if cfg.data.kind != "synth":
        raise CmddError(f"{config}: data.kind is {cfg.data.kind!r}, not synth")
    ds = ConfigDataSource(cfg.data, seed=seed).train_dataset(cfg.stages.patch[-1], len(cfg.stages.patch) - 1)
    ds.config = dataclasses.replace(ds.config, noise_prob=0.0, jpeg_prob=0.0)
    for i in range(count):
        smp = ds.sample(i)
        yield f"{cfg.data.synth}#{i}", smp.blurred.astype(np.float32), smp.sharp.astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", default=[], help="folder of real pairs (validation only; repeatable)")
    ap.add_argument("--config", help="a training config (TOML) whose synthetic training pairs to fit")
    ap.add_argument("--synth", help="with --config: this synth preset instead of the config's")
    ap.add_argument("--count", type=int, default=40, help="with --config: pairs to draw (default 40)")
    ap.add_argument("--seed", type=int, default=0, help="with --config: data seed (default 0)")
    ap.add_argument("--tile", type=int, default=48, help="tile side in px (default 48)")
    args = ap.parse_args()
    if bool(args.data) == bool(args.config):
        raise CmddError("give --data or --config (one of them)")
    pairs = _real_pairs(args.data) if args.data else _training_pairs(args.config, args.synth, args.count, args.seed)
    radius, detail = [], []
    for name, blurred, sharp in pairs:
        r, d = fit_radii(blurred, sharp, args.tile)
        radius.append(r)
        detail.append(d)
        if args.data:
            s = summarise(r, d)
            print(f"{name}: {s['tiles']} tiles, median radius {s['median']:g} px, >= 10 px {100 * s['share_ge_10']:.0f} %",
                  flush=True)
    s = summarise(np.concatenate(radius), np.concatenate(detail))
    print(f"all: {s['tiles']} textured tiles, median radius {s['median']:g} px, >= 10 px {100 * s['share_ge_10']:.1f} %")
    print("share of tiles per radius (px): " + ", ".join(f"{r:g}: {100 * v:.1f} %" for r, v in s["hist"].items()))
    return 0


if __name__ == "__main__":
    run_script(main)  # CmddError / OSError: one line, exit 1
