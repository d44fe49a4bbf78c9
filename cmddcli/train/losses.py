"""Training losses: the paper's L1, L1 plus an FFT-amplitude L1 (MIMO-UNet, NAFNet), L1 plus a
local-range (halo) penalty, and the mean squared error.

``l2``: ``mean (pred − y)²``, the loss whose optimum is the conditional mean and whose minimum is the
highest PSNR (the published metric; NAFNet trains on the PSNR of each image, Chen et al., ECCV 2022).
L1's optimum is the conditional median: where the network cannot tell whether a region is blurred
(DPDD frames are mostly in focus), the median correction is often none while the mean is a partial
one, so an L1-trained network corrects too little by the PSNR's measure. Measured on v3 (L1, real
pairs): the least-squares scale of its correction is 1.30 on its own 60 training pairs and 1.28 on
validation (``scripts/residual_gain.py``; issue 28, session 17). ``l2_halo``: ``l2`` plus the halo
term of ``l1_halo`` (the MSE's gradient per pixel is ``2 (pred − y)``, ~20x smaller than L1's for
errors of a few levels, so a weight ~1/20 of an ``l1_halo`` weight charges rims alike).

``l1_fft``: ``mean|pred − y| + w · mean| |rfft2(pred)| − |rfft2(y)| |``, the FFT over the last two
dimensions of (B, 3, P, P) in float32 with torch's default ("backward", unnormalised) scaling as in
MIMO-UNet: the FFT term grows with the patch side, so its weight relative to L1 is larger at 256²
than at 128². Amplitudes only: the term rewards restoring high-frequency energy without caring for
its phase (that is what the pixel L1 is for).

``l1_halo``: ``mean|pred − y| + w · mean(under + over)``, where ``under`` / ``over`` are how far
``pred`` falls below the smallest / rises above the largest value that the blurred input *and* the
sharp target hold within a ``window`` square around each pixel, per channel (:func:`range_excursion`).
A correct restoration stays inside the target's local range and an under-sharpened one inside the
input's, so only over-sharpening (dark or bright rims along edges, ringing) is charged; the pixel L1
charges it too, but only as much as any other error of the same size. cmdd's own term (against the
dark outlines that over-sharpening draws along edges of JPEG photos); ``scripts/halo_check.py`` measures the same
excursions on luma, on validation photos.

Target alignment (``TrainConfig.target_align = "colour"``, any loss): real pairs such as DPDD's are two
shots (f/4 and f/22) with their own exposure and white balance. :func:`align_photometry` gives each
target crop the input's photometry before the loss, so the network learns to remove blur, not to
reproduce each scene's exposure accident (cmdd's own; the same idea as the colour-fair PSNR
of :mod:`cmddcli.eval.metrics`, fitted on low-passed images because the input is blurred).

Anchor (``TrainConfig.anchor_weight`` > 0, any loss): ``+ w · mean(keep · (pred − ref)²)``, where ``ref``
is the output of a frozen copy of the run's starting weights on the same crop and ``keep`` is 0 within
``halo_window`` px of a pixel where ``ref`` itself leaves the input's and target's local range by more
than one 8-bit level, 1 elsewhere (:func:`anchor_term`). A rim term alone lets a small network answer
rims by shrinking its whole correction (v4's least-squares residual gain is 1.28 on its training
pairs and 1.30 on validation, as v3's; issue 28, session 18); the anchor holds the start's correction away from its rims, so only the
rims themselves are free to change. (A distillation term from the start weights, as in "learning
without forgetting", Li & Hoiem, ECCV 2016, restricted here to where the start draws no rim; cmdd's own.)
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import CmddError

__all__ = ["fft_amplitude_l1", "check_window", "local_range", "range_excursion", "make_loss", "LOSSES",
           "TARGET_ALIGNS", "align_photometry", "anchor_term", "RIM_LEVEL"]

LOSSES = ("l1", "l1_fft", "l1_halo", "l2", "l2_halo")
TARGET_ALIGNS = ("none", "colour")  # TrainConfig.target_align: see align_photometry

LossFn = Callable[..., torch.Tensor]
RIM_LEVEL = 1.0 / 255.0  # anchor_term: a reference pixel this far outside the local range is a rim


def fft_amplitude_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the 2-D FFT amplitudes of (B, C, H, W) tensors (float32)."""
    a = torch.fft.rfft2(pred.float()).abs()  # (B, C, H, W/2+1)
    b = torch.fft.rfft2(target.float()).abs()
    return F.l1_loss(a, b)


def check_window(window: int, name: str = "the halo window") -> None:
    """Raise CmddError, naming ``name``, unless ``window`` (pixels) is odd and >= 1."""
    if window < 1 or window % 2 == 0:
        raise CmddError(f"{name} must be odd and >= 1, got {window}")


def local_range(*images: torch.Tensor, window: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel (min, max) over a ``window`` x ``window`` square of all ``images`` together.

    Args: (B, C, H, W) tensors of one shape; ``window`` odd >= 1 (pixels). At the borders the square
    is cut to the image (as scipy's min/max filters with ``mode="nearest"``).
    Returns: two (B, C, H, W) tensors. Raises CmddError for an even or non-positive window.
    The min / max filters are the anti-ringing clamp's (:func:`cmddcli.engine.antiring.local_min` /
    ``local_max``, tested against scipy), applied to the images' pixelwise min / max.
    """
    from ..engine.antiring import local_max, local_min

    check_window(window)
    stacked = torch.stack(images)
    return local_min(stacked.amin(0), window), local_max(stacked.amax(0), window)


def range_excursion(pred: torch.Tensor, inp: torch.Tensor, target: torch.Tensor,
                    window: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """(under, over): how far ``pred`` falls below / rises above the local range of ``inp`` and
    ``target`` (:func:`local_range`), per pixel and channel, >= 0, in the images' units.

    Args: three (B, C, H, W) tensors; ``window`` odd >= 1. Returns two (B, C, H, W) tensors.
    """
    lo, hi = local_range(inp, target, window=window)
    return torch.relu(lo - pred), torch.relu(pred - hi)


def align_photometry(target: torch.Tensor, inp: torch.Tensor, pool: int = 0,
                     gain_range: tuple[float, float] = (0.5, 2.0)) -> torch.Tensor:
    """``target`` with the exposure and colour of ``inp``: per sample and channel, ``a·target + b``, where
    ``a``, ``b`` are the least-squares fit of the low-passed input on the low-passed target.

    Args:
        target, inp: (B, C, P, P) tensors in [0, 1] (sharp target, blurred input).
        pool: side (px) of the box low-pass (average pooling) both are reduced with before the fit; it
            must exceed the blur so that both low-passed images agree where the scene does. 0 = P / 8
            (at least 8).
        gain_range: ``a`` is clamped to it (a flat crop has no reliable gain).
    Returns: (B, C, P, P), no gradient through ``a`` and ``b``. Not clipped: the loss compares it with
    an unclipped prediction.
    """
    pool = pool or max(8, target.shape[-1] // 8)
    with torch.no_grad():
        t = F.avg_pool2d(target.float(), pool, ceil_mode=True)  # (B, C, h, w)
        i = F.avg_pool2d(inp.float(), pool, ceil_mode=True)
        tm, im = t.mean((-2, -1), keepdim=True), i.mean((-2, -1), keepdim=True)
        var = ((t - tm) ** 2).mean((-2, -1), keepdim=True)
        cov = ((t - tm) * (i - im)).mean((-2, -1), keepdim=True)
        a = torch.where(var > 1e-8, cov / var.clamp_min(1e-8), torch.ones_like(var)).clamp(*gain_range)
        b = im - a * tm
    return target * a + b


def anchor_term(pred: torch.Tensor, ref: torch.Tensor, inp: torch.Tensor, target: torch.Tensor,
                window: int = 9) -> torch.Tensor:
    """``mean(keep · (pred − ref)²)``: the squared distance of ``pred`` from the reference output
    ``ref`` away from ``ref``'s rims (module docstring, "Anchor").

    ``keep`` (B, 1, P, P) is 0 within ``window`` px of any pixel where ``ref`` lies more than
    :data:`RIM_LEVEL` outside the local range of ``inp`` and ``target`` (:func:`range_excursion`, any
    channel), else 1. Args: four (B, C, P, P) tensors in [0, 1] units; ``ref`` carries no gradient.
    Returns a scalar tensor (the mean over every element, masked ones counting as 0).
    """
    with torch.no_grad():
        under, over = range_excursion(ref, inp, target, window)
        rim = ((under + over).amax(1, keepdim=True) > RIM_LEVEL).float()  # (B, 1, P, P)
        keep = 1.0 - F.max_pool2d(rim, window, stride=1, padding=window // 2)
    return (keep * (pred - ref.detach()) ** 2).mean()


def make_loss(kind: str = "l1", fft_weight: float = 0.1, halo_weight: float = 1.0,
              halo_window: int = 9, target_align: str = "none", anchor_weight: float = 0.0) -> LossFn:
    """The loss function ``(pred, target, inp=None, ref=None) -> scalar`` named by ``TrainConfig.loss``.

    ``inp`` (the blurred input, (B, 3, P, P)) is needed by ``l1_halo`` / ``l2_halo``, by ``target_align =
    "colour"`` (:func:`align_photometry` applied to the target first) and by the anchor; ``ref`` (the
    frozen start's output, (B, 3, P, P)) by ``anchor_weight`` > 0 (:func:`anchor_term`, against the
    aligned target).
    Raises CmddError for an unknown kind or alignment or a negative anchor weight, and (at call time)
    when ``inp`` or ``ref`` is needed and missing.
    """
    base = _base_loss(kind, fft_weight, halo_weight, halo_window)
    if target_align not in TARGET_ALIGNS:
        raise CmddError(f"target_align must be one of {', '.join(TARGET_ALIGNS)}, got {target_align!r}")
    if not anchor_weight >= 0:
        raise CmddError(f"anchor_weight must be >= 0, got {anchor_weight}")
    if anchor_weight > 0:
        check_window(halo_window)

    def loss(pred: torch.Tensor, target: torch.Tensor, inp: Optional[torch.Tensor] = None,
             ref: Optional[torch.Tensor] = None) -> torch.Tensor:
        if target_align == "colour":
            if inp is None:
                raise CmddError("target_align = colour needs the blurred input")
            target = align_photometry(target, inp)
        value = base(pred, target, inp)
        if anchor_weight > 0:
            if inp is None or ref is None:
                raise CmddError("anchor_weight > 0 needs the blurred input and the reference output")
            value = value + anchor_weight * anchor_term(pred, ref.float(), inp.float(), target, halo_window)
        return value

    return loss


def _base_loss(kind: str, fft_weight: float, halo_weight: float, halo_window: int) -> LossFn:
    if kind == "l1":
        def l1(pred: torch.Tensor, target: torch.Tensor, inp: Optional[torch.Tensor] = None) -> torch.Tensor:
            return F.l1_loss(pred, target)

        return l1
    if kind == "l1_fft":
        def l1_fft(pred: torch.Tensor, target: torch.Tensor, inp: Optional[torch.Tensor] = None) -> torch.Tensor:
            return F.l1_loss(pred, target) + fft_weight * fft_amplitude_l1(pred, target)

        return l1_fft
    if kind in ("l1_halo", "l2_halo"):
        check_window(halo_window)  # now, not at step 1
        pixel = F.l1_loss if kind == "l1_halo" else F.mse_loss

        def with_halo(pred: torch.Tensor, target: torch.Tensor, inp: Optional[torch.Tensor] = None) -> torch.Tensor:
            if inp is None:
                raise CmddError(f"loss {kind} needs the blurred input")
            under, over = range_excursion(pred, inp.float(), target, halo_window)
            return pixel(pred, target) + halo_weight * (under + over).mean()

        return with_halo
    if kind == "l2":
        def l2(pred: torch.Tensor, target: torch.Tensor, inp: Optional[torch.Tensor] = None) -> torch.Tensor:
            return F.mse_loss(pred, target)

        return l2
    raise CmddError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")
