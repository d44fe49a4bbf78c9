"""Blending a restored photo with the photo as shot: ``--strength`` and restore masks.

Everything is blended in linear light (a 50 % mix of two sRGB values is not the colour halfway
between them; a 50 % mix of their linear values is)::

    out_lin = in_lin + w · (restored_lin − in_lin),   w = strength · mask   (per pixel)

then clipped to [0, 1] and encoded back. The sRGB transfer functions are IEC 61966-2-1 (the same
as :mod:`cmddcli.data.synth`). Exactness, which the tests check: where ``w == 0`` the output *is*
the input and where ``w == 1`` it *is* the restored image (those pixels are copied, not
recomputed), so strength 1 without a mask is today's full deblur, bit for bit.

Strength above 1 extrapolates (sharpens beyond what the network did). It is limited to
:data:`STRENGTH_MAX` = 1.5: the per-pixel change is then at most 1.5x the network's own change in
linear light, and the result is clipped to the valid range. Past that, overshoot halos and
amplified noise dominate.

Masks (``--mask``): a grey image of the photo's size, white = restore, black = keep as shot,
grey = blend. Hard edges are feathered by :func:`feather` (two 5-px box passes: a step becomes a
smooth ramp spanning exactly 8 px, and a pixel more than 4 px from an edge is untouched).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CmddError, InputError
from ..photo.samples import linear_to_srgb, srgb_to_linear

log = logging.getLogger(__name__)

STRENGTH_MAX = 1.5
FEATHER_PX = 8  # width of the ramp a hard mask edge becomes (pixels)

__all__ = ["STRENGTH_MAX", "FEATHER_PX", "check_strength", "srgb_to_linear", "linear_to_srgb", "feather",
           "load_mask", "blend"]


def check_strength(strength: float) -> float:
    """``strength`` as a float, or CmddError when it is outside [0, STRENGTH_MAX]."""
    s = float(strength)
    if not (0.0 <= s <= STRENGTH_MAX):  # also rejects NaN
        raise CmddError(f"--strength must be between 0 and {STRENGTH_MAX} (got {strength})")
    return s


def feather(mask: np.ndarray, width: int = FEATHER_PX) -> np.ndarray:
    """Soften the hard edges of an (H, W) mask in [0, 1]: two box filters of ``width // 2 + 1`` px.

    Two passes of a box of ``2k + 1`` px (``k = width // 4``) make a triangle kernel of ``4k + 1``
    px: a step becomes a ramp whose intermediate values span ``4k`` = ``width`` px, and pixels more
    than ``2k`` px from an edge keep their value exactly. Borders are replicated. Returns float32.
    """
    k = max(0, int(width) // 4)
    m = np.ascontiguousarray(mask, dtype=np.float32)
    if k == 0:
        return m
    t = torch.from_numpy(m)[None, None]  # (1, 1, H, W)
    for _ in range(2):
        t = F.avg_pool2d(F.pad(t, (k, k, k, k), mode="replicate"), 2 * k + 1, stride=1)
    out = t[0, 0].numpy()
    # exact 0 / 1 where the box saw only 0 / only 1 (avg_pool's float sums can land a hair off)
    out = np.where(out < 1e-6, 0.0, np.where(out > 1.0 - 1e-6, 1.0, out))
    return out.astype(np.float32)


def load_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Read a restore mask and check it against the photo's ``size`` = (width, height).

    Any image Pillow reads (PNG, TIFF, JPEG...; 8 or 16 bit); colour is reduced to luminance and an
    alpha channel is ignored; EXIF orientation is applied (the mask is compared with the upright
    photo). Returns (H, W) float32 in [0, 1], 1 = restore, feathered by :func:`feather`.

    Raises InputError (naming the mask file) when it is missing, unreadable or of another size.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "mask not found")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                arr = np.asarray(im, dtype=np.float64) / 65535.0
            elif im.mode == "F":
                arr = np.asarray(im, dtype=np.float64)
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(path, f"cannot read the mask ({e})") from e
    h, w = arr.shape[:2]
    if (w, h) != tuple(size):
        raise InputError(path, f"mask is {w}x{h} but the photo is {size[0]}x{size[1]} (it must be the photo's size)")
    return feather(np.clip(arr, 0.0, 1.0))


def blend(original: np.ndarray, restored: np.ndarray, strength: float = 1.0,
          mask: Optional[np.ndarray] = None, encoded: bool = True) -> np.ndarray:
    """Mix the restored image into the original in linear light.

    Args:
        original: (H, W, 3) float32 in [0, 1], the photo as shot.
        restored: (H, W, 3) float32 in [0, 1], the network's output for it.
        strength: 0 (original) .. 1 (restored) .. STRENGTH_MAX (extrapolated); CmddError outside.
        mask: optional (H, W) float32 in [0, 1], multiplied with ``strength`` per pixel.
        encoded: the pixels are sRGB-encoded (decoded to linear light for the mix); False for
            images that are already linear (a RAW developed with ``--raw-linear``).

    Returns (H, W, 3) float32 in [0, 1]. Pixels with weight exactly 0 are the original's and
    pixels with weight exactly 1 are the restored image's.
    """
    s = check_strength(strength)
    if original.shape != restored.shape:
        raise ValueError(f"original {original.shape} and restored {restored.shape} differ in shape")
    if mask is not None and mask.shape != original.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the image {original.shape[:2]}")
    if mask is None:
        if s == 1.0:
            return restored
        if s == 0.0:
            return original
        w = np.full(original.shape[:2], s, np.float32)
    else:
        w = np.asarray(mask, np.float32) * np.float32(s)
    w3 = w[..., None]  # (H, W, 1)
    if encoded:
        lin_in, lin_out = srgb_to_linear(original), srgb_to_linear(restored)
        mixed = linear_to_srgb(lin_in + w3 * (lin_out - lin_in))
    else:
        mixed = np.clip(original + w3 * (restored - original), 0.0, 1.0).astype(np.float32)
    out = np.where(w3 == 0.0, original, np.where(w3 == 1.0, restored, mixed))
    return out.astype(np.float32, copy=False)
