"""Sharp photographs for the defocus synthesiser, and a filter that keeps only their sharp parts.

Wallpapers often have deliberate bokeh (a sharp flower on a blurred background). A synthetic pair
made from a blurred region teaches the network to *keep* blur, so tiles are scored before use:

- the image is converted to grey and split into ``block``×``block`` blocks;
- a block is *sharp* when the standard deviation of its 3×3 Laplacian (fine-scale detail) is at
  least ``threshold`` (grey in [0, 1]) **and** at least ``min_ratio`` of the Laplacian of the same
  block after a 2× box downscale (true defocus removes the finest scale first, so blurred texture has
  a low fine/coarse ratio even where it has contrast);
- a tile is kept when at least ``min_fraction`` of its blocks are sharp.

Flat regions (sky, walls) fail the first test; they carry no information about blur anyway.
Large images are first downscaled to ``max_side`` pixels (area filter), which also removes the
slight softness of many camera JPEGs at full resolution.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from .discovery import natural_key
from ..photo.arrays import DATASET_EXTENSIONS, read_image, to_float

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharpnessFilter:
    block: int = 32
    threshold: float = 0.015
    min_ratio: float = 0.55
    min_fraction: float = 0.7


@dataclass(frozen=True)
class SharpTile:
    """A square region (in the image after downscaling to ``max_side``) judged sharp."""

    path: str
    y: int
    x: int
    size: int
    score: float  # fraction of sharp blocks
    max_side: int | None = 1600  # the photograph's longest side (px) after downscaling; None = as stored


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (naturally sorted; hidden files and folders skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    it = folder.rglob("*") if recursive else folder.iterdir()
    files = [p for p in it if p.is_file() and p.suffix.lower() in DATASET_EXTENSIONS
             and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)]
    return sorted(files, key=lambda p: natural_key(p.relative_to(folder).as_posix()))


def resize_max_side(img: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale a float (H, W, C) image so that its longer side is <= ``max_side`` (antialiased)."""
    h, w = img.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return img
    import torch

    s = max_side / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).clamp(0, 1).numpy().copy()


def load_sharp(path: str | os.PathLike, max_side: int | None = 1600) -> np.ndarray:
    """Read a photograph as float32 sRGB (H, W, 3) in [0, 1], downscaled to ``max_side``.

    JPEGs larger than needed are decoded at a reduced DCT scale first (Pillow's ``draft``; never
    below ``max_side``), which is several times faster for 4K wallpapers."""
    path = Path(path)
    if max_side and path.suffix.lower() in (".jpg", ".jpeg") and path.is_file():
        from PIL import Image, ImageOps

        try:
            with Image.open(path) as im:
                w, h = im.size
                if max(w, h) > 2 * max_side:
                    s = max_side / max(w, h)
                    im.draft("RGB", (int(w * s) + 1, int(h * s) + 1))
                    im = ImageOps.exif_transpose(im).convert("RGB")
                    return resize_max_side(to_float(np.asarray(im)), max_side)
        except (OSError, Image.DecompressionBombError) as e:  # the latter is not an OSError
            raise InputError(path, f"cannot decode image ({e})") from e
    return resize_max_side(to_float(read_image(path)), max_side)


def _laplacian_std_blocks(gray: np.ndarray, block: int) -> np.ndarray:
    """Std of the 3×3 Laplacian per block (its interior), (H//block, W//block)."""
    g = np.pad(gray, 1, mode="edge")
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    nh, nw = gray.shape[0] // block, gray.shape[1] // block
    b = lap[:nh * block, :nw * block].reshape(nh, block, nw, block)
    return b[:, 1:-1, :, 1:-1].std(axis=(1, 3))  # block interiors only: no pixel sees a neighbour block


def block_sharpness(img: np.ndarray, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per-block (fine Laplacian std, fine/coarse ratio) of an sRGB float image (H, W, 3)."""
    gray = (0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]).astype(np.float32)
    if min(gray.shape) < block:  # not one whole block (a strip, an icon): no blocks (a 1-px side broke np.pad)
        empty = np.zeros((0, 0), np.float32)
        return empty, empty
    fine = _laplacian_std_blocks(gray, block)
    h2, w2 = (gray.shape[0] // 2) * 2, (gray.shape[1] // 2) * 2
    half = gray[:h2, :w2].reshape(h2 // 2, 2, w2 // 2, 2).mean(axis=(1, 3))
    coarse = _laplacian_std_blocks(half, block // 2)[: fine.shape[0], : fine.shape[1]]
    fine = fine[: coarse.shape[0], : coarse.shape[1]]
    ratio = fine / np.maximum(coarse, 1e-6)
    return fine, ratio


def sharp_mask(img: np.ndarray, filt: SharpnessFilter = SharpnessFilter()) -> np.ndarray:
    """Boolean (H//block, W//block): which blocks are sharp."""
    fine, ratio = block_sharpness(img, filt.block)
    return (fine >= filt.threshold) & (ratio >= filt.min_ratio)


def sharp_tiles(img: np.ndarray, tile: int = 256, stride: int | None = None,
                filt: SharpnessFilter = SharpnessFilter(), path: str = "") -> list[SharpTile]:
    """Tiles (``tile``² at ``stride``, block-aligned) whose fraction of sharp blocks is at least
    ``filt.min_fraction``."""
    b = filt.block
    if tile % b:
        raise ValueError(f"tile ({tile}) must be a multiple of the block size ({b})")
    stride = stride or tile // 2
    stride = max(b, (stride // b) * b)
    mask = sharp_mask(img, filt)
    nb = tile // b
    out = []
    h, w = img.shape[:2]
    for y in range(0, h - tile + 1, stride):
        for x in range(0, w - tile + 1, stride):
            frac = float(mask[y // b:y // b + nb, x // b:x // b + nb].mean())
            if frac >= filt.min_fraction:
                out.append(SharpTile(path=path, y=y, x=x, size=tile, score=frac))
    return out


def find_sharp_tiles(paths: Sequence[str | os.PathLike], tile: int = 256, max_side: int | None = 1600,
                     filt: SharpnessFilter = SharpnessFilter()) -> list[SharpTile]:
    """Sharp tiles of every image (coordinates in the image downscaled to ``max_side``, which each
    tile records)."""
    out: list[SharpTile] = []
    for p in paths:
        img = load_sharp(p, max_side)
        tiles = [replace(t, max_side=max_side) for t in sharp_tiles(img, tile, filt=filt, path=str(p))]
        log.debug("%s: %d sharp tiles", p, len(tiles))
        out += tiles
    return out
