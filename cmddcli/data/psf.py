"""Defocus PSFs: the disk of version 1, the shape family of version 2 (:class:`PSFShape`), and the
Gaussian fit of an Airy pattern for diffraction. Kernels are normalised (k, k) float32 arrays, or
(3, k, k) with per-channel radii."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PSF_KINDS = ("disk", "rim", "apodized", "gaussian", "soft", "polygon", "ring")
AIRY_SIGMA_PER_DIAMETER = 0.42 / 2.44  # Gaussian fit of an Airy pattern: sigma = 0.42 lambda N, diameter 2.44 lambda N


def disk_kernel(radius: float, soft_edge: float = 0.0, antialias: bool = True) -> np.ndarray:
    """Normalised disk PSF of the given radius (px), shape (2R+1, 2R+1), R = ceil(radius + soft_edge).

    Anti-aliased: weight = clip((radius − dist) / (1 + soft_edge) + 0.5, 0, 1), a one-pixel ramp
    approximating pixel coverage (wider with ``soft_edge``). Radius < 0.5 gives a unit impulse.
    """
    if radius < 0.5 and soft_edge <= 0:
        return np.ones((1, 1), np.float32)
    half = int(math.ceil(radius + soft_edge + 0.5))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    dist = np.sqrt(xx * xx + yy * yy, dtype=np.float64)
    if antialias or soft_edge > 0:
        k = np.clip((radius - dist) / (1.0 + soft_edge) + 0.5, 0.0, 1.0)
    else:
        k = (dist <= radius).astype(np.float64)
    k /= k.sum()
    return k.astype(np.float32)


@dataclass(frozen=True)
class PSFShape:
    """One lens's defocus PSF shape, scaled by the CoC radius ``R`` (see :func:`psf_kernel`).

    Profile over ``rho = dist / R`` inside the aperture: disk 1; rim ``1 + rim · rho^rim_power``
    (overcorrected spherical aberration, "soap bubble" bokeh); apodized ``max(1 − rim · rho², 0.05)``;
    gaussian ``exp(−rho² / 2 sigma²)``; soft: a disk with a wide rim ramp; ring
    ``exp(−((rho − 0.8) / 0.12)²)`` (mirror lenses); polygon: a ``blades``-sided aperture rotated by
    ``rotation``. ``edge``: width of the rim ramp as a fraction of R. ``catseye``, ``cat_angle``: the
    aperture is cut to the intersection of two disks of radius R centred at ``±catseye·R/2`` along
    ``cat_angle`` (mechanical vignetting off axis; the shape stays centred). ``chroma``: R and B
    radii ``R·(1 − chroma)``, ``R·(1 + chroma)``.
    """

    kind: str = "disk"
    rim: float = 0.0
    rim_power: float = 4.0
    sigma: float = 0.5
    edge: float = 0.0
    blades: int = 6
    rotation: float = 0.0
    catseye: float = 0.0
    cat_angle: float = 0.0
    chroma: float = 0.0


def _psf_weights(xx: np.ndarray, yy: np.ndarray, radius: float, shape: PSFShape, ramp: float) -> np.ndarray:
    """The continuous PSF (unnormalised) at points (xx, yy) px from its centre."""
    dist = np.hypot(xx, yy)
    bound = np.full_like(dist, radius)
    if shape.kind == "polygon":  # regular polygon with inradius-to-circumradius ratio cos(pi / n)
        n = max(3, int(shape.blades))
        seg = 2 * math.pi / n
        theta = (np.arctan2(yy, xx) - shape.rotation) % seg - seg / 2
        bound = radius * math.cos(math.pi / n) / np.cos(theta)
    w = np.clip((bound - dist) / ramp + 0.5, 0.0, 1.0)
    if shape.catseye > 0:
        off = 0.5 * shape.catseye * radius
        ox, oy = off * math.cos(shape.cat_angle), off * math.sin(shape.cat_angle)
        for sgn in (1.0, -1.0):
            w = w * np.clip((radius - np.hypot(xx - sgn * ox, yy - sgn * oy)) / ramp + 0.5, 0.0, 1.0)
    rho = dist / radius
    if shape.kind in ("rim", "polygon") and shape.rim:
        w = w * (1.0 + shape.rim * np.minimum(rho, 1.0) ** shape.rim_power)
    elif shape.kind == "apodized":
        w = w * np.maximum(1.0 - shape.rim * rho ** 2, 0.05)
    elif shape.kind == "gaussian":
        w = w * np.exp(-rho ** 2 / (2 * shape.sigma ** 2))
    elif shape.kind == "ring":
        w = w * np.exp(-((rho - 0.8) / 0.12) ** 2)
    return w


def psf_kernel(radius: float, shape: PSFShape = PSFShape(), supersample: int = 4) -> np.ndarray:
    """Normalised, non-negative PSF (2H+1, 2H+1) for CoC radius ``radius`` px and a :class:`PSFShape`.

    The continuous PSF is sampled at ``supersample``² points per pixel and averaged (pixel
    integration, as if rendered at a ``supersample``× larger size and downscaled with a box filter);
    a hard edge gets a ramp of 1/supersample px between sub-samples. Radius < 0.5 gives a unit impulse.
    """
    if radius < 0.5:
        return np.ones((1, 1), np.float32)
    s = max(1, int(supersample))
    edge = shape.edge * radius
    ramp = max(edge, 1.0 / s)
    half = int(math.ceil(radius + edge + 1.0))
    n = 2 * half + 1
    sub = (np.arange(s) + 0.5) / s - 0.5
    coords = (np.arange(-half, half + 1)[:, None] + sub[None, :]).ravel()  # (n·s,)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    k = _psf_weights(xx, yy, radius, shape, ramp).reshape(n, s, n, s).mean(axis=(1, 3))
    total = k.sum()
    if total <= 0:  # pragma: no cover - a positive radius always covers the centre
        return np.ones((1, 1), np.float32)
    return (k / total).astype(np.float32)


def psf_kernels_rgb(radius: float, shape: PSFShape, supersample: int = 4) -> np.ndarray:
    """Per-channel PSFs (3, k, k) with radii ``r·(1 − chroma)``, ``r``, ``r·(1 + chroma)``, padded alike."""
    ks = [psf_kernel(radius * f, shape, supersample) for f in (1.0 - shape.chroma, 1.0, 1.0 + shape.chroma)]
    n = max(k.shape[0] for k in ks)
    out = np.zeros((3, n, n), np.float32)
    for c, k in enumerate(ks):
        o = (n - k.shape[0]) // 2
        out[c, o:o + k.shape[0], o:o + k.shape[0]] = k
    return out


def gaussian_kernel(sigma: float, supersample: int = 4) -> np.ndarray:
    """Normalised Gaussian PSF, integrated over sub-pixels; sigma <= 0 gives a unit impulse."""
    if sigma <= 0:
        return np.ones((1, 1), np.float32)
    s = max(1, int(supersample))
    half = max(1, int(math.ceil(3 * sigma)))
    n = 2 * half + 1
    sub = (np.arange(s) + 0.5) / s - 0.5
    coords = (np.arange(-half, half + 1)[:, None] + sub[None, :]).ravel()
    g = np.exp(-coords ** 2 / (2 * sigma ** 2))
    k = np.outer(g, g).reshape(n, s, n, s).mean(axis=(1, 3))
    return (k / k.sum()).astype(np.float32)
