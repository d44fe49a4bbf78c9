"""Training crops: window positions, the DPDNet/Restormer least-sharp-patch filter, and the
per-image crop job (resumable, atomic, 16-bit kept).

Windows follow the paper (512×512, 60 % overlap, i.e. stride ⌊512·0.4⌋ = 204) and always reach the
border: the last window in each direction is flush with the image edge, exactly like Restormer's
``generate_patches_dpdd.py`` (for 1680×1120: x = 0, 204, …, 1020, 1168 and y = 0, 204, 408, 608,
so 7 × 4 = 28 windows per image).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..fileutil import sha256_file
from .manifest import PairEntry, relpath, sha256_bytes
from ..atomic import atomic_write_bytes
from ..photo.arrays import encode_png, png_header, read_image

FLIPS = ("h", "v")
RECORD_DIR = ".cmdd-prepare"


def stride_for(window: int, overlap_fraction: float) -> int:
    """Stride for a window and an overlap fraction: ⌊window·(1 − overlap_fraction)⌋, at least 1."""
    if not 0.0 <= overlap_fraction < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap_fraction}")
    return max(1, int(math.floor(window * (1.0 - overlap_fraction) + 1e-9)))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows along one axis; the last window ends exactly at ``length``."""
    if window > length:
        raise ValueError(f"window {window} is larger than the image side {length}")
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def window_grid(height: int, width: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(y, x) of every window, row-major."""
    return [(y, x) for y in window_starts(height, window, stride) for x in window_starts(width, window, stride)]


# --------------------------------------------------------------------------------------------------
# sharpness (DPDNet / Restormer patch filter)


def _binomial(n: int) -> np.ndarray:
    k = np.array([1.0])
    for _ in range(n):
        k = np.convolve(k, [1.0, 1.0])
    return k


def sobel_kernels(ksize: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's separable Sobel kernels for a first derivative: (smoothing, derivative), each of
    length ``ksize`` (odd, >= 3)."""
    if ksize < 3 or ksize % 2 == 0:
        raise ValueError("ksize must be odd and >= 3")
    smooth = _binomial(ksize - 1)
    deriv = np.convolve(_binomial(ksize - 3), [-1.0, 0.0, 1.0])
    return smooth, deriv


def sobel_energy(gray: np.ndarray, ksize: int) -> np.ndarray:
    """Σ sqrt(gx² + gy²) per patch, like ``cv2.Sobel(..., ksize)`` with the default reflect-101
    border. ``gray``: (N, H, W) float. Returns (N,) float64."""
    import torch  # imported here: worker processes that only list files never load torch
    import torch.nn.functional as F

    smooth, deriv = sobel_kernels(ksize)
    x = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float64))[:, None]  # (N, 1, H, W)
    p = ksize // 2
    x = F.pad(x, (p, p, p, p), mode="reflect")  # reflect == OpenCV BORDER_REFLECT_101
    s = torch.from_numpy(smooth)
    d = torch.from_numpy(deriv)
    # conv2d is a correlation; OpenCV's kernels are applied as correlation too
    gx = F.conv2d(F.conv2d(x, d.view(1, 1, 1, -1)), s.view(1, 1, -1, 1))
    gy = F.conv2d(F.conv2d(x, s.view(1, 1, 1, -1)), d.view(1, 1, -1, 1))
    return torch.sqrt(gx * gx + gy * gy).sum(dim=(1, 2, 3)).numpy()


def sharpness_scores(patches: np.ndarray, ksizes: tuple[int, ...] = (3, 7, 11, 15)) -> np.ndarray:
    """The DPDNet/Restormer fitness of each patch: per kernel size the Sobel energy, min-max
    normalised over the patches of one image, multiplied together. ``patches``: (N, H, W, 3)."""
    p = patches.astype(np.float64)
    gray = 0.299 * p[..., 0] + 0.587 * p[..., 1] + 0.114 * p[..., 2]
    total = np.ones(len(p))
    for k in ksizes:
        e = sobel_energy(gray, k)
        e = e - e.min()
        top = e.max()
        total *= e / top if top > 0 else np.zeros_like(e)
    return total


def keep_sharpest(scores: np.ndarray, drop: float) -> list[int]:
    """Indices kept after dropping ``int(drop · N)`` lowest scores (ties: earlier index dropped
    first, as the reference script's repeated argmin). Order preserved."""
    n = len(scores)
    k = int(drop * n)
    dropped = set(np.argsort(scores, kind="stable")[:k].tolist())
    return [i for i in range(n) if i not in dropped]


# --------------------------------------------------------------------------------------------------
# the per-image crop job (runs in worker processes; arguments and results are plain data)


@dataclass(frozen=True)
class CropOptions:
    window: int = 512
    stride: int = 204
    flips: tuple[str, ...] = FLIPS  # extra saved copies: "h" (left-right), "v" (up-down)
    drop_blurry: float = 0.0  # fraction of least-sharp windows dropped per image (0.3 in the scripts)
    png_level: int = 6

    def to_json(self) -> dict[str, Any]:
        return {"window": self.window, "stride": self.stride, "flips": list(self.flips),
                "drop_blurry": self.drop_blurry}


@dataclass(frozen=True)
class CropJob:
    name: str
    split: str
    source: str  # absolute paths of the full images
    target: str
    out_dir: str  # the prepared folder (holds the manifest)
    options: CropOptions
    subset: str | None = None


@dataclass
class CropResult:
    entries: list[dict[str, Any]] = field(default_factory=list)
    written: int = 0
    kept: int = 0  # crop files already there and reused


def _stat(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _flip(a: np.ndarray, flip: str | None) -> np.ndarray:
    if flip == "h":
        return a[:, ::-1]
    if flip == "v":
        return a[::-1, :]
    return a


def crop_name(stem: str, y: int, x: int, flip: str | None) -> str:
    return f"{stem}_y{y:04d}_x{x:04d}" + (f"_{flip}" if flip else "")


def _record_path(job: CropJob) -> Path:
    return Path(job.out_dir) / RECORD_DIR / job.split / f"{job.name}.json"


def _reuse_record(job: CropJob, stats: dict[str, list[int]]) -> CropResult | None:
    """The entries of a finished earlier run when its options and inputs match and every crop is
    still there with its recorded byte size; else None."""
    rec_path = _record_path(job)
    try:
        rec = json.loads(rec_path.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("options") != job.options.to_json() or rec.get("inputs") != stats:
        return None
    out = Path(job.out_dir)
    for e in rec["entries"]:
        for key in ("source", "target"):
            p = out / e[key]
            try:
                if p.stat().st_size != e["bytes_" + key]:
                    return None
            except OSError:
                return None
    return CropResult(entries=rec["entries"], kept=2 * len(rec["entries"]))


def run_crop_job(job: CropJob) -> CropResult:
    """Crop one image pair into ``out_dir/{split}/{source,target}/``; resumable.

    A crop already on disk is kept when it is a PNG of the right size and bit depth (existence +
    size; crops are only ever written atomically, so a file that exists is complete). When the
    record of a finished earlier run matches (same options, same input size/mtime, every crop file
    there with its recorded byte size) nothing is decoded at all.
    """
    stats = {"source": _stat(job.source), "target": _stat(job.target)}
    reused = _reuse_record(job, stats)
    if reused is not None:
        return reused
    opt = job.options
    src = read_image(job.source)
    tgt = read_image(job.target)
    if src.shape != tgt.shape:
        raise InputError(job.target, f"size {tgt.shape[1]}x{tgt.shape[0]} differs from the source's "
                                     f"{src.shape[1]}x{src.shape[0]}")
    h, w = src.shape[:2]
    if opt.window > min(h, w):
        raise InputError(job.source, f"image {w}x{h} is smaller than the {opt.window}px crop window")
    grid = window_grid(h, w, opt.window, opt.stride)
    if opt.drop_blurry > 0:
        patches = np.stack([tgt[y:y + opt.window, x:x + opt.window] for y, x in grid])
        grid = [grid[i] for i in keep_sharpest(sharpness_scores(patches), opt.drop_blurry)]
    bits = 16 if src.dtype == np.uint16 else 8
    out = Path(job.out_dir)
    res = CropResult()
    for y, x in grid:
        for flip in (None, *opt.flips):
            name = crop_name(job.name, y, x, flip)
            entry: dict[str, Any] = {
                "name": name, "split": job.split, "subset": job.subset, "width": opt.window,
                "height": opt.window, "bit_depth": bits, "origin": job.name,
                "window": [y, x, opt.window, opt.window], "flip": flip, "extra": {},
            }
            for key, img in (("source", src), ("target", tgt)):
                path = out / job.split / key / f"{name}.png"
                hdr = png_header(path)
                if hdr is not None and hdr[:3] == (opt.window, opt.window, bits):
                    digest, nbytes = sha256_file(path), path.stat().st_size
                    res.kept += 1
                else:
                    data = encode_png(np.ascontiguousarray(_flip(img[y:y + opt.window, x:x + opt.window], flip)),
                                      opt.png_level)
                    atomic_write_bytes(path, data, fsync=False)
                    digest, nbytes = sha256_bytes(data), len(data)
                    res.written += 1
                entry[key] = relpath(path, out)
                entry["sha256_" + key] = digest
                entry["bytes_" + key] = nbytes
            res.entries.append(entry)
    rec = {"options": opt.to_json(), "inputs": stats, "entries": res.entries}
    atomic_write_bytes(_record_path(job), json.dumps(rec).encode(), fsync=False)
    return res


def entry_from_result(d: dict[str, Any]) -> PairEntry:
    return PairEntry.from_json({k: v for k, v in d.items() if not k.startswith("bytes_")})
