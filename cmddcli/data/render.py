"""Layered defocus rendering: a linear-light image and a disparity map are cut into depth slices,
each slice's premultiplied colour and alpha are blurred with its PSF (FFT convolution) and laid
"over" what is behind it, far to near; the sum is normalised by the accumulated alpha."""

from __future__ import annotations

import math

import numpy as np
import torch

from .psf import disk_kernel


def _fast_len(n: int) -> int:
    """Smallest m >= n whose prime factors are 2, 3 and 5 (fast FFT sizes)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _fft_blur(stack: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Convolve (C, H, W) with a centred (k, k) kernel, circularly (the caller pads)."""
    _, h, w = stack.shape
    kh, kw = kernel.shape
    k = torch.zeros(h, w, dtype=stack.dtype)
    k[:kh, :kw] = torch.from_numpy(kernel)
    k = torch.roll(k, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))  # centre at (0, 0)
    out = torch.fft.irfft2(torch.fft.rfft2(stack) * torch.fft.rfft2(k), s=(h, w))
    return out


def _slices(labels: np.ndarray, n: int, disparity: np.ndarray, coc_scale: float,
            focus: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slice labels 0..n-1 -> (labels renumbered over the non-empty slices, each slice's mean
    disparity, its CoC radius in px)."""
    counts = np.bincount(labels.ravel(), minlength=n)
    sums = np.bincount(labels.ravel(), weights=disparity.ravel().astype(np.float64), minlength=n)
    present = np.nonzero(counts)[0]
    remap = np.full(n, -1, np.int64)
    remap[present] = np.arange(len(present))
    d = sums[present] / counts[present]
    return remap[labels], d, coc_scale * np.abs(d - focus)


def slice_disparity(disparity: np.ndarray, coc_scale: float, focus: float, radius_step: float = 0.5,
                    max_slices: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut the disparity range into slices whose CoC radii differ by <= ``radius_step`` px.

    Returns (labels (H, W) int, slice disparities (S,), slice radii (S,)), slices ordered far to
    near; a slice's disparity is the mean of its pixels (so a constant layer keeps its own value).
    """
    dmin, dmax = float(disparity.min()), float(disparity.max())
    span = dmax - dmin
    n = 1
    if span > 0 and coc_scale > 0:
        n = int(min(max_slices, max(1, math.ceil(span * coc_scale / radius_step))))
    labels = np.zeros(disparity.shape, np.int64) if n == 1 else np.minimum(
        ((disparity - dmin) / span * n).astype(np.int64), n - 1)
    return _slices(labels, n, disparity, coc_scale, focus)


def slice_disparity_rel(disparity: np.ndarray, coc_scale: float, focus: float, radius_step: float = 0.5,
                        radius_step_rel: float = 0.15,
                        max_slices: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`slice_disparity`, but neighbouring slices may differ by ``max(radius_step,
    radius_step_rel · r)`` px: uniform steps up to ``r0 = radius_step / radius_step_rel``, geometric
    beyond. Fewer slices (FFT convolutions) for large blur, where half a pixel is invisible."""
    r0 = radius_step / radius_step_rel
    signed = (disparity.astype(np.float64) - focus) * coc_scale  # signed CoC radius, increasing with d
    r = np.abs(signed)
    g = np.where(r <= r0, r / radius_step,
                 r0 / radius_step + np.log(np.maximum(r, r0) / r0) / math.log1p(radius_step_rel))
    t = np.sign(signed) * g
    t = t - t.min()
    span = float(t.max())
    scale = 1.0 if span < max_slices else (max_slices - 1e-6) / span
    labels = np.floor(t * scale).astype(np.int64)
    n = int(labels.max()) + 1
    return _slices(labels, n, disparity, coc_scale, focus)


def _fft_blur_rgb(stack: torch.Tensor, kernels: np.ndarray) -> torch.Tensor:
    """Convolve (2·3, H, W) (premultiplied RGB, then RGB alpha) with per-channel kernels (3, k, k)."""
    _, h, w = stack.shape
    _, kh, kw = kernels.shape
    k = torch.zeros(3, h, w, dtype=stack.dtype)
    k[:, :kh, :kw] = torch.from_numpy(kernels)
    k = torch.roll(k, shifts=(-(kh // 2), -(kw // 2)), dims=(1, 2))
    kf = torch.fft.rfft2(k).repeat(2, 1, 1)  # (6, H, W/2+1)
    return torch.fft.irfft2(torch.fft.rfft2(stack) * kf, s=(h, w))


def render_defocus(linear: np.ndarray, disparity: np.ndarray, focus: float, coc_scale: float,
                   soft_edge: float = 0.0, antialias: bool = True, radius_step: float = 0.5,
                   max_slices: int = 40, kernel_fn=None, radius_step_rel: float = 0.0,
                   margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Layered defocus of a linear-light image (H, W, 3) for a disparity map (H, W).

    CoC radius = ``coc_scale · |disparity − focus|`` px. Returns (blurred (H, W, 3), coc (H, W)).
    Pixels whose slice radius is < 0.5 px are copied exactly.

    ``kernel_fn(radius)`` gives the PSF: (k, k), or (3, k, k) per channel (default: the disk of
    :func:`disk_kernel`). ``radius_step_rel``: see :func:`slice_disparity_rel`. ``margin``: the
    image already has this many pixels of real content around the part that matters, so reflect
    padding is only added for kernels wider than that (the border of the output is then approximate).
    """
    h, w, _ = linear.shape
    if radius_step_rel > 0:
        labels, d, radii = slice_disparity_rel(disparity, coc_scale, focus, radius_step, radius_step_rel, max_slices)
    else:
        labels, d, radii = slice_disparity(disparity, coc_scale, focus, radius_step, max_slices)
    if kernel_fn is None:
        kernels = [disk_kernel(float(r), soft_edge, antialias) for r in radii]
    else:
        kernels = [kernel_fn(float(r)) for r in radii]
    return _composite(linear, labels, radii, kernels, margin)


def _composite(linear: np.ndarray, labels: np.ndarray, radii: np.ndarray, kernels: list, margin: int = 0):
    """Blur each slice ``s`` (``labels == s``) of ``linear`` (H, W, 3) with ``kernels[s]`` and composite
    the slices far to near. Kernels are (k, k): premultiplied colour and one alpha, 4-channel FFTs;
    or, when any is (3, k, k), per channel: each channel its own alpha, 6-channel FFTs. Reflect
    padding by the largest kernel radius less ``margin`` (no wrap-around reaches the kept centre),
    and a little more at the bottom / right to reach a fast FFT size."""
    h, w, _ = linear.shape
    rgb = any(k.ndim == 3 for k in kernels)
    if rgb:
        kernels = [k if k.ndim == 3 else np.repeat(k[None], 3, 0) for k in kernels]
    else:
        kernels = [k[None] for k in kernels]
    nc = 3 if rgb else 1
    half = max(k.shape[1] // 2 for k in kernels)
    pad = max(0, half + 1 - margin)
    ph, pw = _fast_len(h + 2 * pad) - h - pad, _fast_len(w + 2 * pad) - w - pad
    img_p = np.pad(linear, ((pad, ph), (pad, pw), (0, 0)), mode="reflect")
    lab_p = np.pad(labels, ((pad, ph), (pad, pw)), mode="reflect")
    img_t = torch.from_numpy(np.ascontiguousarray(img_p.transpose(2, 0, 1), dtype=np.float32))  # (3, Hp, Wp)
    lab_t = torch.from_numpy(lab_p)
    acc_c = torch.zeros_like(img_t)
    acc_a = torch.zeros_like(img_t[:nc])
    for s in range(len(radii)):  # far to near
        mask = (lab_t == s).to(torch.float32)[None]  # (1, Hp, Wp)
        layer = torch.cat([img_t * mask, mask.expand(nc, -1, -1)])  # (3 + nc, Hp, Wp)
        if kernels[s].shape[1] > 1:
            layer = (_fft_blur_rgb(layer, kernels[s]) if rgb else _fft_blur(layer, kernels[s][0])).clamp_(min=0.0)
        alpha = layer[3:].clamp(max=1.0)  # (nc, Hp, Wp)
        acc_c = acc_c * (1.0 - alpha) + layer[:3]
        acc_a = acc_a * (1.0 - alpha) + alpha
    out = (acc_c / acc_a.clamp(min=1e-6))[:, pad:pad + h, pad:pad + w]
    coc = radii[labels].astype(np.float32)
    return out.permute(1, 2, 0).numpy().astype(np.float32), coc
