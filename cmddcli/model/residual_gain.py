"""Residual gain: scale what the network adds to its input, folded into its last convolution.

CMDDNet restores ``y = x + r(x)`` with ``r = output_conv(features)`` (a 3x3 convolution without bias,
:class:`cmddcli.model.cmddnet.CMDDNet`). Multiplying that convolution's weight by ``g`` gives exactly
``y_g = x + g * r(x)``: the same network, its correction ``g`` times as strong, at no run-time cost.

Why: a network trained with an L1 loss on crops whose blur differs from the photos it meets (here:
half synthetic, smaller blur than DPDD's real f/4 pairs) can under-correct on those photos. The
mean-squared-error-optimal ``g`` for a set of pairs is ``<r, t - x> / <r, r>`` (least squares of the
target's residual ``t - x`` on ``r``); :func:`gain_curve` measures the PSNR at a grid of gains
instead, since the published protocol clips to [0, 1] and colour-fair PSNR fits colour first
(:mod:`cmddcli.eval.metrics`). Fit ``g`` on training pairs only; judge it on validation
(issue 28, session 17; scripts/residual_gain.py).

``cmdd deblur --strength`` is the user's control of the same idea, blended in linear light at run time
(:mod:`cmddcli.engine.blend`); this module changes the weights' own default output, in the
network's (sRGB) space.
"""

from __future__ import annotations

from typing import Dict, Iterable, Sequence

import numpy as np
import torch

from ..errors import CmddError
from .cmddnet import CMDDNet


def check_gain(gain: float) -> None:
    """Raise CmddError unless ``gain`` is a finite number > 0 (a residual gain)."""
    if not (np.isfinite(gain) and gain > 0):
        raise CmddError(f"residual gain must be a finite number > 0, got {gain}")


def scale_residual(model: CMDDNet, gain: float) -> CMDDNet:
    """Multiply, in place, the output convolution of ``model`` by ``gain`` (> 0); returns the model.

    The network then computes ``x + gain * r(x)`` where it computed ``x + r(x)`` (exact up to float
    rounding: the output convolution is linear and has no bias).

    Raises:
        CmddError: ``gain`` not a finite number > 0, or an output convolution with a bias (the
            residual would not scale exactly).
    """
    check_gain(gain)
    conv = model.output
    if conv.bias is not None:
        raise CmddError("the output convolution has a bias: scaling it would not scale the residual exactly")
    with torch.no_grad():
        conv.weight.mul_(gain)
    return model


def gain_curve(x: np.ndarray, y: np.ndarray, target: np.ndarray, gains: Sequence[float],
               metrics: Iterable[str] = ("psnr", "psnr_cf")) -> Dict[float, Dict[str, float]]:
    """Scores of ``clip(x + g * (y - x), 0, 1)`` against ``target`` for each gain ``g``.

    Args:
        x: the network's input, (H, W, 3) float in [0, 1].
        y: the network's output for ``x`` (unclipped), same shape.
        target: the sharp image, same shape.
        gains: the gains to score (1 = the network as it is).
        metrics: names understood by :func:`cmddcli.eval.metrics.compute_metrics`.

    Returns:
        ``{g: {metric: value}}`` (PSNR in dB).

    Raises:
        CmddError: shapes differ.
    """
    from ..eval.metrics import compute_metrics

    if not x.shape == y.shape == target.shape:
        raise CmddError(f"input, output and target shapes differ: {x.shape}, {y.shape}, {target.shape}")
    x64, r = x.astype(np.float64), y.astype(np.float64) - x.astype(np.float64)
    names = list(metrics)
    return {float(g): compute_metrics(np.clip(x64 + g * r, 0.0, 1.0), target, names) for g in gains}
