"""Image-quality metrics: PSNR, SSIM and MAE, scikit-image compatible (SPEC §3).

All functions take two images of the same shape, HxW or HxWxC, float in [0, 1] (any float or integer
dtype is converted to float64 first; integers are *not* rescaled, so pass floats). Maths runs in float64.

- ``psnr``: ``10·log10(data_range² / MSE)`` over all pixels and channels
  (= ``skimage.metrics.peak_signal_noise_ratio(target, pred, data_range=1)``).
- ``ssim``: calls ``skimage.metrics.structural_similarity(target, pred, data_range=1, channel_axis=-1)``
  (the published numbers are scikit-image's): ``window="uniform"`` (default) is a 7×7 box with sample
  covariance (N/(N-1)); ``window="gaussian"`` is the 11×11, σ=1.5 Gaussian with population covariance,
  i.e. ``gaussian_weights=True, use_sample_covariance=False`` (Wang et al. 2004). K1=0.01, K2=0.03.
  The mean of the SSIM map drops ``(win-1)//2`` pixels at every border, then the per-channel means are
  averaged; with a mask, the masked pixels of that cropped map are averaged instead.
- ``mae``: mean absolute error per channel, averaged over channels (= the mean over all values).
- ``psnr_cf`` (colour-fair PSNR, cmdd's own): per channel, the least-squares gain ``a`` and offset ``b``
  that map the prediction to the target over the scored pixels (``min Σ (a·pred + b − target)²``) are
  applied to the prediction, which is then clipped to [0, 1] and scored with ``psnr``. It forgives a
  global exposure / white-balance difference, which DPDD's two shots (f/4 input, f/22 target: two
  exposures) carry and which a deblurring network should not learn, and keeps every local error
  (blur, ringing, halos). Not a published metric: report it beside PSNR, never instead of it.

An optional boolean ``mask`` (HxW) restricts every metric to the pixels where it is True (for SSIM,
the masked pixels of the border-cropped SSIM map).

LPIPS is offered only when the optional ``lpips`` package and its weights are installed
(``lpips_distance``); otherwise it raises ``BackendUnavailable`` saying how to get it.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Optional, Sequence

import numpy as np

from ..errors import BackendUnavailable, CmddError

__all__ = [
    "psnr",
    "ssim",
    "ssim_map",
    "mae",
    "colour_fit",
    "psnr_cf",
    "lpips_distance",
    "compute_metrics",
    "METRIC_NAMES",
    "HIGHER_IS_BETTER",
]

# Order used for tables and CSV columns.
METRIC_NAMES = ("psnr", "ssim", "mae", "psnr_cf", "lpips")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "mae": False, "psnr_cf": True, "lpips": False}

SSIM_WINDOWS = ("uniform", "gaussian")


def _as_float64(pred, target) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(pred, dtype=np.float64)
    b = np.asarray(target, dtype=np.float64)
    if a.shape != b.shape:
        raise CmddError(f"image shapes differ: prediction {a.shape} vs target {b.shape}")
    if a.ndim not in (2, 3):
        raise CmddError(f"expected an HxW or HxWxC image, got shape {a.shape}")
    return a, b


def _check_mask(mask: Optional[np.ndarray], shape: Sequence[int]) -> Optional[np.ndarray]:
    if mask is None:
        return None
    m = np.asarray(mask).astype(bool)
    if m.shape != tuple(shape[:2]):
        raise CmddError(f"mask shape {m.shape} does not match the image size {tuple(shape[:2])}")
    if not m.any():
        raise CmddError("the mask selects no pixels")
    return m


def psnr(pred, target, data_range: float = 1.0, mask: Optional[np.ndarray] = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10·log10(data_range² / MSE)``; ``inf`` for identical images."""
    a, b = _as_float64(pred, target)
    m = _check_mask(mask, a.shape)
    d = (a - b) ** 2
    mse = float(d[m].mean() if m is not None else d.mean())
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10((data_range**2) / mse))


def mae(pred, target, mask: Optional[np.ndarray] = None) -> float:
    """Mean absolute error per channel, averaged over channels (= mean over all values)."""
    a, b = _as_float64(pred, target)
    m = _check_mask(mask, a.shape)
    d = np.abs(a - b)
    if d.ndim == 2:
        d = d[..., None]
    per_channel = d[m].mean(axis=0) if m is not None else d.reshape(-1, d.shape[-1]).mean(axis=0)
    return float(per_channel.mean())


def colour_fit(pred, target, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """``pred`` with a per-channel gain and offset fitted to ``target`` by least squares over the
    scored pixels (``mask``, default all), clipped to [0, 1]: (H, W[, C]) float64.

    Per channel: ``a = cov(pred, target) / var(pred)``, ``b = mean(target) − a·mean(pred)`` (ordinary
    least squares of target on pred); a constant channel (``var = 0``) gets ``a = 1``. See ``psnr_cf``.
    """
    a, b = _as_float64(pred, target)
    m = _check_mask(mask, a.shape)
    x = a if a.ndim == 3 else a[..., None]
    y = b if b.ndim == 3 else b[..., None]
    xs = x[m] if m is not None else x.reshape(-1, x.shape[-1])  # (N, C)
    ys = y[m] if m is not None else y.reshape(-1, y.shape[-1])
    xm, ym = xs.mean(0), ys.mean(0)
    var = ((xs - xm) ** 2).mean(0)
    cov = ((xs - xm) * (ys - ym)).mean(0)
    gain = np.where(var > 1e-12, cov / np.maximum(var, 1e-12), 1.0)
    offset = ym - gain * xm
    out = np.clip(x * gain + offset, 0.0, 1.0)
    return out if a.ndim == 3 else out[..., 0]


def psnr_cf(pred, target, data_range: float = 1.0, mask: Optional[np.ndarray] = None) -> float:
    """Colour-fair PSNR in dB: :func:`psnr` of :func:`colour_fit` ``(pred, target)`` (module docstring)."""
    return psnr(colour_fit(pred, target, mask), target, data_range, mask)


# ---------------------------------------------------------------- SSIM


def ssim_map(
    pred,
    target,
    data_range: float = 1.0,
    window: str = "uniform",
    K1: float = 0.01,
    K2: float = 0.03,
) -> tuple[np.ndarray, int]:
    """The SSIM map (HxW or HxWxC, float64) and the border `pad` skimage drops before averaging.

    Shapes: images (H, W[, C]); windows are applied over H and W only, channel by channel.
    """
    a, b, size = _ssim_inputs(pred, target, window)
    _, S = _skimage_ssim(a, b, data_range, window, K1, K2, full=True)
    return S, (size - 1) // 2


def _ssim_inputs(pred, target, window: str) -> tuple[np.ndarray, np.ndarray, int]:
    """float64 images and the window size (7 uniform, 11 Gaussian); CmddError for an unknown window
    or an image smaller than it."""
    if window not in SSIM_WINDOWS:
        raise CmddError(f"unknown SSIM window {window!r}; choose one of {', '.join(SSIM_WINDOWS)}")
    a, b = _as_float64(pred, target)
    size = 11 if window == "gaussian" else 7
    if min(a.shape[0], a.shape[1]) < size:
        raise CmddError(f"image {a.shape[:2]} is smaller than the {size}x{size} SSIM window")
    return a, b, size


def _skimage_ssim(a: np.ndarray, b: np.ndarray, data_range: float, window: str, K1: float = 0.01,
                  K2: float = 0.03, full: bool = False):
    """``skimage.metrics.structural_similarity(target, pred)`` with the protocol's window settings."""
    from skimage.metrics import structural_similarity

    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False) if window == "gaussian" else {}
    return structural_similarity(b, a, data_range=data_range, channel_axis=-1 if a.ndim == 3 else None,
                                 K1=K1, K2=K2, full=full, **kw)


def ssim(
    pred,
    target,
    data_range: float = 1.0,
    window: str = "uniform",
    mask: Optional[np.ndarray] = None,
) -> float:
    """Structural similarity: scikit-image's, as published (see the module docstring)."""
    if mask is None:
        a, b, _ = _ssim_inputs(pred, target, window)
        return float(_skimage_ssim(a, b, data_range, window))
    S, pad = ssim_map(pred, target, data_range=data_range, window=window)
    m = _check_mask(mask, S.shape)
    if S.ndim == 2:
        S = S[..., None]
    H, W = S.shape[:2]
    core = S[pad : H - pad, pad : W - pad]  # skimage: crop(S, pad), every border
    if m is not None:
        mc = m[pad : H - pad, pad : W - pad]
        if not mc.any():
            raise CmddError("the mask selects no pixels inside the SSIM border")
        per_channel = core[mc].mean(axis=0)
    else:
        per_channel = core.reshape(-1, core.shape[-1]).mean(axis=0)
    return float(per_channel.mean())


# ---------------------------------------------------------------- LPIPS (optional)

_LPIPS_MODELS: Dict[str, object] = {}


def _lpips_model(net: str = "alex"):
    if net in _LPIPS_MODELS:
        return _LPIPS_MODELS[net]
    try:
        import lpips  # type: ignore
    except ImportError as e:
        raise BackendUnavailable(
            "LPIPS needs the optional 'lpips' package: pip install lpips (its backbone weights must "
            "be available offline, e.g. in the torch hub cache)"
        ) from e
    try:
        model = lpips.LPIPS(net=net, verbose=False).eval()
    except Exception as e:  # noqa: BLE001 - any failure means the weights are not usable here
        raise BackendUnavailable(
            f"LPIPS ({net}) could not load its weights ({type(e).__name__}: {e}); install them into the "
            "torch hub cache on a machine with network access"
        ) from e
    _LPIPS_MODELS[net] = model
    return model


def lpips_distance(pred, target, net: str = "alex") -> float:
    """LPIPS distance (lower is better) with the optional `lpips` package; images HxWx3 in [0, 1]."""
    import torch

    a, b = _as_float64(pred, target)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise CmddError("LPIPS needs RGB images (HxWx3)")
    model = _lpips_model(net)

    def to_t(x: np.ndarray):
        return torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None] * 2 - 1  # (1, 3, H, W)

    with torch.no_grad():
        return float(model(to_t(a), to_t(b)).item())


# ---------------------------------------------------------------- dispatch


def parse_metric_names(spec: str | Iterable[str]) -> list[str]:
    """'psnr,ssim,mae' -> ['psnr', 'ssim', 'mae'], rejecting unknown names and duplicates."""
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise CmddError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}")
    if not names:
        raise CmddError("no metric requested")
    return list(dict.fromkeys(names))


def compute_metrics(
    pred,
    target,
    names: Sequence[str] = ("psnr", "ssim", "mae"),
    ssim_window: str = "uniform",
    mask: Optional[np.ndarray] = None,
) -> Dict[str, float]:
    """Every requested metric for one image pair, as a dict name -> value."""
    fns: Dict[str, Callable[[], float]] = {
        "psnr": lambda: psnr(pred, target, mask=mask),
        "ssim": lambda: ssim(pred, target, window=ssim_window, mask=mask),
        "mae": lambda: mae(pred, target, mask=mask),
        "psnr_cf": lambda: psnr_cf(pred, target, mask=mask),
        "lpips": lambda: _lpips_masked(pred, target, mask),
    }
    return {n: fns[n]() for n in parse_metric_names(names)}


def _lpips_masked(pred, target, mask) -> float:
    if mask is not None:
        raise CmddError("LPIPS cannot be combined with --mask (use --crop-top instead)")
    return lpips_distance(pred, target)
