"""Ship checks beyond the protocol metrics: rims (halo) and colour casts of restored photos.

Two diagnostics of the default weights' ship rule (``training/v3/README.md``; issue 28), used by
``scripts/halo_check.py``, ``scripts/colour_check.py`` and ``scripts/ship_check.py``:

* :func:`halo_excursions`: how far an output's luma falls below / rises above what the blurred input
  *and* the sharp target hold within a window around each pixel. A correct restoration stays within
  the target's local range, and blur within the input's (up to noise), so what lies outside both is
  over-sharpening: dark or bright rims along edges. cmdd's own measure (the same quantity the
  training loss ``l1_halo`` / ``l2_halo`` charges, :func:`cmddcli.train.losses.range_excursion`).
* :func:`channel_shift`: the mean difference per channel, output minus input, in 8-bit levels; its
  spread over the three channels (``np.ptp``) is the colour cast. An equal shift of all three is a
  change of brightness, which a correct deblur makes (defocus averages linear light and the sRGB
  curve is concave), so only the cast is ruled on.
"""

from __future__ import annotations

import numpy as np
import torch

from ..train.losses import range_excursion

__all__ = ["LUMA", "HALO_LEVELS", "halo_excursions", "halo_share", "channel_shift"]

LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601 luma weights
HALO_LEVELS = 4.0  # a pixel counts as a rim when it lies more than this many 8-bit levels outside


def halo_excursions(out: np.ndarray, inp: np.ndarray, target: np.ndarray,
                    window: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel (under, over) in 8-bit luma levels: how far ``out`` falls below the smallest / rises
    above the largest value of ``inp`` and ``target`` within a ``window`` square.

    Args: three (H, W, 3) float arrays in [0, 1]; ``window`` odd, >= 1 (px).
    Returns: two (H, W) float arrays >= 0. Raises CmddError for an even or non-positive window.
    """
    y = [torch.from_numpy(255.0 * (np.asarray(a, dtype=np.float64) @ LUMA))[None, None]
         for a in (out, inp, target)]  # (1, 1, H, W)
    under, over = range_excursion(y[0], y[1], y[2], window)
    return under[0, 0].numpy(), over[0, 0].numpy()


def halo_share(under: np.ndarray, over: np.ndarray, levels: float = HALO_LEVELS) -> tuple[float, float]:
    """(share of pixels more than ``levels`` under, share more than ``levels`` over), in percent."""
    return 100.0 * float((under > levels).mean()), 100.0 * float((over > levels).mean())


def channel_shift(out: np.ndarray, inp: np.ndarray, block: int = 32) -> tuple[np.ndarray, float]:
    """(mean difference per channel, largest |difference| of a block's channel mean), 8-bit levels.
    The colour cast is ``np.ptp`` of the first.

    Args: ``out``, ``inp``: (H, W, 3) float in [0, 1], one size; ``block``: block side in px (blocks
    that do not fit at the right / bottom edge are left out).
    Raises: ValueError when the sizes differ.
    """
    if out.shape != inp.shape:
        raise ValueError(f"sizes differ: {out.shape[1]}x{out.shape[0]} vs {inp.shape[1]}x{inp.shape[0]}")
    diff = (out.astype(np.float64) - inp.astype(np.float64)) * 255.0
    whole = diff.reshape(-1, diff.shape[-1]).mean(0)
    h, w = (diff.shape[0] // block) * block, (diff.shape[1] // block) * block
    if h == 0 or w == 0:
        return whole, float(np.abs(whole).max())
    blocks = diff[:h, :w].reshape(h // block, block, w // block, block, -1).mean((1, 3))
    return whole, float(np.abs(blocks).max())
