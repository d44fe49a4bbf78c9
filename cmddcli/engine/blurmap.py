"""Per-pixel defocus maps and the subject mask behind ``--focus auto``.

Estimator (classical, no weights, so it does not change when the network's weights do): a dense
form of the re-blur gradient ratio of Zhuo & Sim, "Defocus map estimation from a single image",
Pattern Recognition 44(9), 2011. An edge blurred by a Gaussian of std ``σ`` and re-blurred by a
known ``σ0`` has gradient-magnitude ratio ``R = |∇I| / |∇I_σ0| = sqrt(σ² + σ0²) / σ`` at the
edge, hence ``σ = σ0 / sqrt(R² − 1)``. Instead of sparse edge points propagated by a matting
Laplacian, we

1. take the luminance at a working resolution (long side at most ``work_size``; σ is scaled back),
2. aggregate the squared gradient magnitudes of the image and of its re-blur (σ0 = 2 px) over a
   Gaussian window (σ = 6 px), after subtracting the gradient energy of the noise (noise std from
   Immerkær's Laplacian estimator, "Fast noise variance estimation", CVIU 64(2), 1996); without
   that step sensor noise reads as sharpness,
3. apply the ratio formula per pixel and smooth the result with a guided filter (He, Sun & Tang,
   "Guided image filtering", ECCV 2010) so the map's edges follow the image's,
4. report a disk CoC radius ``r ≈ 2σ`` (a uniform disk of radius r has per-axis std r/2).

Measured on synthetic pairs with known CoC (``benchmarks/bench_blurmap.py``, docs/photographer.md):
Spearman rank correlation with the true CoC is quoted there. Flat, textureless areas carry no
information; their estimate is whatever the window and guided filter carry in from nearby texture.

``focus_mask`` turns a map into the region ``--focus auto`` restores: a two-class (Otsu) split of
the log map; the subject's core is where the map is confidently in the sharper class (the band in
between, where the map is unreliable, is left as shot); the core is cleaned with a morphological
opening and closing, holes filled (so a subject is kept whole up to its outline), grown by the map's
window, completed with the image segments it mostly covers, and feathered by :func:`blend.feather`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.depth import covered_segments
from ..photo.samples import from_float
from .blend import feather

log = logging.getLogger(__name__)

WORK_SIZE = 1024  # long side (px) the map is estimated at
REBLUR_SIGMA = 2.0  # σ0 of the re-blur (px at the working resolution)
WINDOW_SIGMA = 6.0  # Gaussian aggregation window (px)
GUIDED_RADIUS = 8
GUIDED_EPS = 1e-3
MAX_SIGMA = 40.0
MIN_SEPARATION = 2.0  # --focus auto: background must be this many times blurrier than the subject
MIN_GAP_PX = 1.5  # ... and this many px of CoC radius blurrier
GROW_WINDOWS = 1.0  # the subject core is grown by this many aggregation windows (the map's blurred rim)
CORE_LEVEL = 0.4  # subject core: CoC below a · (b / a) ** CORE_LEVEL (a, b: the two classes' medians)
SNAP_FRACTION = 0.5  # image segments at least this much inside the subject are added whole ...
SNAP_WINDOWS = 1.0  # ... up to this many aggregation windows beyond it
SEGMENT_SCALE = 100.0  # Felzenszwalb scale (image in [0, 1]) of those segments

__all__ = ["estimate_blur_map", "focus_mask", "FocusResult", "spearman", "blur_map_image", "map_image_paths",
           "save_map_images"]


# ---------------------------------------------------------------------------------------- helpers


def _gauss(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (1, 1, H, W), reflected borders (replicated when too small)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma * sigma))
    k = k / k.sum()
    mode_w = "reflect" if r < x.shape[-1] else "replicate"
    mode_h = "reflect" if r < x.shape[-2] else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode_w), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=mode_h), k.view(1, 1, -1, 1))


def _grad_energy(x: torch.Tensor) -> torch.Tensor:
    """Squared gradient magnitude (central differences) of (1, 1, H, W)."""
    gx = F.pad(x, (1, 1, 0, 0), mode="replicate")
    gy = F.pad(x, (0, 0, 1, 1), mode="replicate")
    gx = (gx[..., 2:] - gx[..., :-2]) / 2
    gy = (gy[..., 2:, :] - gy[..., :-2, :]) / 2
    return gx * gx + gy * gy


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), 2 * r + 1, stride=1)


def _guided(guide: torch.Tensor, p: torch.Tensor, r: int, eps: float) -> torch.Tensor:
    """He et al.'s guided filter of ``p`` with a gray ``guide`` (both (1, 1, H, W))."""
    mi, mp = _box(guide, r), _box(p, r)
    a = (_box(guide * p, r) - mi * mp) / (_box(guide * guide, r) - mi * mi + eps)
    b = mp - a * mi
    return _box(a, r) * guide + _box(b, r)


def _noise_std(g: torch.Tensor) -> float:
    """Immerkær's estimate of white-noise std from the 3x3 Laplacian-difference operator."""
    if min(g.shape[-2:]) < 3:  # no 3x3 neighbourhood: no estimate
        return 0.0
    k = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]).view(1, 1, 3, 3)
    lap = F.conv2d(g, k)  # valid part only
    return float(lap.abs().mean()) * math.sqrt(math.pi / 2) / 6.0 if lap.numel() else 0.0


# ---------------------------------------------------------------------------------------- the map


def estimate_blur_map(image: np.ndarray, work_size: int = WORK_SIZE) -> np.ndarray:
    """Per-pixel defocus estimate of a photo.

    Args:
        image: (H, W, 3) float32 in [0, 1] (sRGB-encoded or linear; only ratios are used).
        work_size: long side (px) the estimate is made at; the result is upsampled bilinearly and
            its values rescaled to full-resolution pixels.

    Returns:
        (H, W) float32: estimated circle-of-confusion radius in pixels of ``image`` (≈ 2 σ of the
        equivalent Gaussian; 0 = sharp). Good for ranking and thresholding, not a calibrated
        measurement (see the module docstring for the method and its measured accuracy).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    h, w = image.shape[:2]
    lum = np.ascontiguousarray(image, dtype=np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    g = torch.from_numpy(np.ascontiguousarray(lum))[None, None]  # (1, 1, H, W)
    scale = max(1.0, max(h, w) / float(work_size))
    if scale > 1.0:
        size = (max(1, round(h / scale)), max(1, round(w / scale)))
        g = F.interpolate(g, size=size, mode="area")
    noise_floor = 0.5 * _noise_std(g) ** 2  # gradient energy of white noise (central differences)
    e_img = (_gauss(_grad_energy(g), WINDOW_SIGMA) - noise_floor).clamp(min=0.0)
    e_reblur = _gauss(_grad_energy(_gauss(g, REBLUR_SIGMA)), WINDOW_SIGMA).clamp(min=1e-12)
    ratio2 = e_img / e_reblur  # R² of the Zhuo-Sim formula
    sigma = (REBLUR_SIGMA / torch.sqrt((ratio2 - 1.0).clamp(min=1e-3))).clamp(max=MAX_SIGMA)
    sigma = _guided(g, sigma, GUIDED_RADIUS, GUIDED_EPS).clamp(min=0.0)
    if scale > 1.0:
        sigma = F.interpolate(sigma, size=(h, w), mode="bilinear", align_corners=False) * scale
    return (2.0 * sigma[0, 0]).numpy().astype(np.float32)


def blur_map_image(blur_map: np.ndarray, full_scale_px: float = 16.0) -> np.ndarray:
    """(H, W) uint8 picture of a map for checking: 0 (black) = sharp, 255 = ``full_scale_px`` or more."""
    return from_float(blur_map / full_scale_px)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equally sized arrays (average ranks for ties).

    Pearson correlation of the ranks; NaN when either array is constant.
    """
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"arrays differ in size: {a.size} vs {b.size}")
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / den if den > 0 else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], xs.size]
    avg = (starts + ends - 1) / 2.0  # average 0-based rank of each run of ties
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


# ---------------------------------------------------------------------------------------- subject


@dataclass
class FocusResult:
    """``mask``: (H, W) float32 in [0, 1], 1 = restore. ``threshold``: CoC radius (px) below
    which the map counts as confidently sharp (the subject's core), or None when no split was found
    (then the mask is all ones).
    ``warning``: a sentence for the report when the result deserves a look."""

    mask: np.ndarray
    threshold: float | None
    subject_fraction: float
    warning: str = ""


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    p = hist.astype(np.float64) / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def _main_parts(m: np.ndarray, keep: float = 0.25) -> np.ndarray:
    """The largest 8-connected part of a boolean mask and any other at least ``keep`` times its area."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(m, structure=np.ones((3, 3), bool))
    if n == 0:
        return m
    area = np.bincount(labels.ravel())[1:]
    return np.isin(labels, np.flatnonzero(area >= keep * area.max()) + 1)


def _complete_with_segments(m: np.ndarray, image: np.ndarray, shape: tuple[int, int], reach: int) -> np.ndarray:
    """Complete the region ``m`` (boolean, ``shape``) with the image segments it mostly covers.

    Flat parts of a subject carry no blur information: their map value is carried in from nearby
    texture, and at the subject's outline that is often the background's. An image segment
    (Felzenszwalb & Huttenlocher's graph segmentation, IJCV 59(2), 2004, on the image at ``shape``)
    at least SNAP_FRACTION inside the region is added whole, but only up to ``reach`` px beyond it.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import felzenszwalb

    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    if tuple(img.shape[-2:]) != tuple(shape):
        img = F.interpolate(img, size=shape, mode="area")
    img = img[0].permute(1, 2, 0).numpy()
    labels = felzenszwalb(img, scale=SEGMENT_SCALE, sigma=0.8, min_size=20)
    add = covered_segments(m, labels, SNAP_FRACTION, strict=False)
    near = ndi.binary_dilation(m, structure=_disk(max(1, reach)))
    return m | (add & near)


def focus_mask(blur_map: np.ndarray, work_size: int = 512, map_work_size: int = WORK_SIZE,
               image: np.ndarray | None = None) -> FocusResult:
    """The region ``--focus auto`` restores: the intended subject, i.e. the confidently least-blurred part.

    Args:
        blur_map: (H, W) CoC radius estimate in px (:func:`estimate_blur_map`).
        work_size: long side (px) of the grid the morphology runs on.
        map_work_size: the ``work_size`` the map was estimated at; with WINDOW_SIGMA it gives the
            map's resolution (its aggregation window) in pixels of the morphology grid.

    1. Two classes: Otsu's threshold (N. Otsu, IEEE Trans. SMC 9(1), 1979) on the log of the map
       (blur sizes compare by ratio). When the blurrier class is not clearly blurrier (median radius
       less than MIN_SEPARATION times and MIN_GAP_PX more than the sharper class's median), there is
       no blurred background to protect: the mask is all ones and ``warning`` says so.
    2. Only confident sharpness seeds the subject: pixels below ``a · (b / a) ** CORE_LEVEL`` (a, b:
       the two classes' medians; CORE_LEVEL = 0.4 of the way from a to b in log scale). The band
       between the classes is where the map is unreliable (next to depth edges, in flat areas); it
       is left as shot there, because a wrongly sharpened bokeh is worse than an edge left as shot.
    3. The core is opened (specks go), reduced to its main connected part(s) (the largest, and any
       at least a quarter of its size), closed, hole-filled (the subject is kept whole up to its
       outline) and dilated by one aggregation window (the map reads a subject's rim blurrier than
       it is, as its window also sees the background).
    4. With ``image`` (the photo, (H, W, 3) in [0, 1]): image segments mostly inside the region are
       added whole, up to one more window beyond it (:func:`_complete_with_segments`: flat parts of the
       subject at its outline).
    5. Brought back to full size and feathered over at most 8 px. Pixels farther than 4 px from
       the region get exactly 0.
    """
    from scipy import ndimage as ndi

    h, w = blur_map.shape
    b = torch.from_numpy(np.ascontiguousarray(blur_map, dtype=np.float32))[None, None]
    scale = max(1.0, max(h, w) / float(work_size))
    if scale > 1.0:
        b = F.interpolate(b, size=(max(1, round(h / scale)), max(1, round(w / scale))), mode="area")
    grid = b[0, 0].numpy()
    lo, hi = np.percentile(grid, [1, 99])
    vals = np.log(np.clip(grid.ravel(), max(lo, 0.05), max(hi, 0.05)))  # outliers must not pull the split
    t = _otsu(vals)
    low, high = vals[vals <= t], vals[vals > t]
    if low.size == 0 or high.size == 0:
        return FocusResult(np.ones((h, w), np.float32), None, 1.0,
                           "no blurred background found; the whole photo was restored")
    m_low, m_high = math.exp(float(np.median(low))), math.exp(float(np.median(high)))
    if m_high < MIN_SEPARATION * m_low or m_high - m_low < MIN_GAP_PX:
        return FocusResult(np.ones((h, w), np.float32), None, 1.0,
                           f"no clearly blurrier background (CoC ~{m_low:.1f} px vs ~{m_high:.1f} px); "
                           "the whole photo was restored")
    core_t = m_low * (m_high / m_low) ** CORE_LEVEL
    window = WINDOW_SIGMA * max(1.0, max(h, w) / float(map_work_size)) / scale  # in px of this grid
    r_open, r_close, r_grow = (max(1, round(k * window)) for k in (1 / 3, 4 / 3, GROW_WINDOWS))
    m = ndi.binary_opening(grid <= core_t, structure=_disk(r_open))  # specks of "sharp" in the background go
    if not m.any():
        return FocusResult(np.ones((h, w), np.float32), None, 1.0,
                           "no confidently sharp region found; the whole photo was restored")
    m = _main_parts(m)
    pad = r_close + 1  # so that the closing does not treat the image border as part of the subject
    m = ndi.binary_closing(np.pad(m, pad), structure=_disk(r_close))[pad:-pad, pad:-pad]
    m = ndi.binary_dilation(ndi.binary_fill_holes(m), structure=_disk(r_grow))
    if image is not None:
        m = _complete_with_segments(m, image, grid.shape, max(1, round(SNAP_WINDOWS * window)))
    mt = torch.from_numpy(m.astype(np.float32))[None, None]
    if scale > 1.0:
        mt = (F.interpolate(mt, size=(h, w), mode="bilinear", align_corners=False) >= 0.5).float()
    mask = feather(mt[0, 0].numpy())
    frac = float(mask.mean())
    warning = "" if frac > 0.01 else "the in-focus subject found is tiny (< 1 % of the photo)"
    log.debug("focus auto: core below %.2f px (classes ~%.2f / ~%.2f px), subject %.1f %% of the photo",
              core_t, m_low, m_high, 100 * frac)
    return FocusResult(mask, core_t, frac, warning)


def map_image_paths(output: str | Path) -> tuple[Path, Path]:
    """(blur map, restore mask) image paths written next to an output ``a/b.jpg``:
    ``a/b_blurmap.png`` and ``a/b_restoremask.png``."""
    output = Path(output)
    return output.with_name(f"{output.stem}_blurmap.png"), output.with_name(f"{output.stem}_restoremask.png")


def save_map_images(output: str | Path, blur_map: np.ndarray, weight: np.ndarray | None = None,
                    full_scale_px: float = 16.0) -> list[Path]:
    """Write ``--save-blur-map`` images next to ``output`` (8-bit gray PNGs, atomically).

    The blur map: black = sharp, white = CoC radius ``full_scale_px`` px or more (the scale is also
    stored in the PNG's ``cmdd:full_scale_px`` text chunk). The restore mask (when not everything
    was restored): white = restored, black = kept as shot. Returns the paths written.
    """
    from PIL import Image, PngImagePlugin

    from ..atomic import atomic_path

    map_path, mask_path = map_image_paths(output)
    info = PngImagePlugin.PngInfo()
    info.add_text("cmdd:full_scale_px", f"{full_scale_px:g}")
    info.add_text("Description", f"cmdd defocus map: CoC radius estimate, white = {full_scale_px:g} px or more")
    written = []
    with atomic_path(map_path) as tmp:
        Image.fromarray(blur_map_image(blur_map, full_scale_px)).save(tmp, format="PNG", pnginfo=info)
    written.append(map_path)
    if weight is not None:
        with atomic_path(mask_path) as tmp:
            Image.fromarray(from_float(weight)).save(tmp, format="PNG")
        written.append(mask_path)
    return written
