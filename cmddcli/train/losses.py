"""Training losses: the paper's L1, and L1 plus an FFT-amplitude L1 (MIMO-UNet, NAFNet).

``l1_fft``: ``mean|pred − y| + w · mean| |rfft2(pred)| − |rfft2(y)| |``, the FFT over the last two
dimensions of (B, 3, P, P) in float32 with torch's default ("backward", unnormalised) scaling as in
MIMO-UNet: the FFT term grows with the patch side, so its weight relative to L1 is larger at 256²
than at 128². Amplitudes only: the term rewards restoring high-frequency energy without caring for
its phase (that is what the pixel L1 is for).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import CmddError

__all__ = ["fft_amplitude_l1", "make_loss", "LOSSES"]

LOSSES = ("l1", "l1_fft")


def fft_amplitude_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the 2-D FFT amplitudes of (B, C, H, W) tensors (float32)."""
    a = torch.fft.rfft2(pred.float()).abs()  # (B, C, H, W/2+1)
    b = torch.fft.rfft2(target.float()).abs()
    return F.l1_loss(a, b)


def make_loss(kind: str = "l1", fft_weight: float = 0.1) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss function ``(pred, target) -> scalar`` named by ``TrainConfig.loss``."""
    if kind == "l1":
        return F.l1_loss
    if kind == "l1_fft":
        def l1_fft(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return F.l1_loss(pred, target) + fft_weight * fft_amplitude_l1(pred, target)

        return l1_fft
    raise CmddError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")
