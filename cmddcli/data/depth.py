"""Random depth maps for the synthesiser: disparity (1 = nearest) of a far background and occluding
objects (ellipses, polygons, smooth blobs; constant or tilted), optionally snapped to image segments;
and the segment snapping that ``engine.blurmap`` shares."""

from __future__ import annotations

import math

import numpy as np
import torch

DEPTH_MODES = ("layers", "planes", "blobs", "mixed", "segments")


def covered_segments(mask: np.ndarray, segments: np.ndarray, fraction: float, strict: bool = True) -> np.ndarray:
    """The union (H, W) bool of the segments (labels 0..n-1) that ``mask`` (H, W) covers by more than
    ``fraction`` of their area (at least ``fraction`` when not ``strict``)."""
    area = np.bincount(segments.ravel())
    inside = np.bincount(segments.ravel(), weights=mask.ravel().astype(np.float64), minlength=len(area))
    share = inside / np.maximum(area, 1)
    return (share > fraction if strict else share >= fraction)[segments]


def _smooth_noise(h: int, w: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid, bicubically upsampled."""
    gh, gw = max(2, cells), max(2, int(round(cells * w / max(h, 1))))
    grid = torch.from_numpy(rng.standard_normal((1, 1, gh, gw)).astype(np.float32))
    up = torch.nn.functional.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)
    return up[0, 0].numpy()


def _shape_mask(h: int, w: int, rng: np.random.Generator, kind: str) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    size = rng.uniform(0.12, 0.45) * min(h, w)
    if kind == "ellipse":
        a, b = size, size * rng.uniform(0.4, 1.0)
        t = rng.uniform(0, math.pi)
        u = (xx - cx) * math.cos(t) + (yy - cy) * math.sin(t)
        v = -(xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == "polygon":  # star-shaped polygon around the centre
        n = int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * math.pi, n))
        rad = size * rng.uniform(0.5, 1.0, n)
        theta = np.arctan2(yy - cy, xx - cx) % (2 * math.pi)
        r = np.hypot(xx - cx, yy - cy)
        # boundary radius along each direction: interpolate the vertices' polar radii
        a_ext = np.concatenate([ang - 2 * math.pi, ang, ang + 2 * math.pi])
        r_ext = np.concatenate([rad, rad, rad])
        return r <= np.interp(theta, a_ext, r_ext)
    # smooth blob: thresholded low-frequency noise around a centre
    noise = _smooth_noise(h, w, rng, cells=int(rng.integers(3, 7)))
    falloff = np.hypot((xx - cx) / size, (yy - cy) / size)
    return noise * 0.6 + 1.0 - falloff > 0.3


def segment_image(image: np.ndarray, scale: float = 130.0, min_size: int = 80) -> np.ndarray:
    """Felzenszwalb segments (H, W) int32 of an sRGB float image (scikit-image; larger scale, larger segments).

    :class:`~cmddcli.data.datasets.SynthDataset` segments each photograph once with this and crops the
    labels with the patch (segmentation is most of the cost of a v2 sample otherwise)."""
    from skimage.segmentation import felzenszwalb

    return felzenszwalb(image, scale=float(scale), sigma=0.8, min_size=int(min_size)).astype(np.int32)


def image_segments(image: np.ndarray, rng: np.random.Generator,
                   scale: tuple[float, float] = (60.0, 300.0)) -> np.ndarray:
    """Felzenszwalb segments (H, W) of a crop, with a random ``scale`` (coarser or finer)."""
    h, w = image.shape[:2]
    sc = float(np.exp(rng.uniform(math.log(scale[0]), math.log(scale[1]))))
    return segment_image(image, sc, max(20, h * w // 400))


def random_disparity(h: int, w: int, rng: np.random.Generator, mode: str = "mixed",
                     n_objects: tuple[int, int] = (1, 5), image: np.ndarray | None = None,
                     segment_scale: tuple[float, float] = (60.0, 300.0),
                     segments: np.ndarray | None = None) -> np.ndarray:
    """A random layered disparity map (H, W) float32 in [0, 1] (1 = nearest).

    ``mode="segments"`` needs ``image`` (H, W, 3) or its ``segments`` (H, W) labels: the objects are
    the shapes of "mixed" snapped to the image's segments (:func:`image_segments`), so depth edges
    follow object edges.
    """
    if mode == "segments":
        if segments is not None:
            segments = np.unique(segments, return_inverse=True)[1].reshape(h, w)  # compact labels
        elif image is not None:
            segments = image_segments(image, rng, segment_scale)
        else:
            raise ValueError('depth mode "segments" needs the image or its segments')
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yn, xn = yy / max(h - 1, 1) - 0.5, xx / max(w - 1, 1) - 0.5

    def plane(base: float, strength: float) -> np.ndarray:
        t = rng.uniform(0, 2 * math.pi)
        return base + strength * (math.cos(t) * xn + math.sin(t) * yn)

    def pick(kinds: tuple[str, ...]) -> str:
        return kinds[int(rng.integers(len(kinds)))]

    # background: far; constant, or a tilted plane (a floor or a wall seen at an angle)
    bg = float(rng.uniform(0.0, 0.35))
    bg_kind = "layers" if mode == "layers" else ("planes" if mode == "planes" else pick(("layers", "planes")))
    disp = np.full((h, w), bg, np.float32) if bg_kind == "layers" else plane(bg + 0.15, rng.uniform(0.1, 0.3))
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    levels = np.sort(rng.uniform(0.25, 1.0, n))  # painted far to near
    for level in levels:
        kind = mode if mode not in ("mixed", "segments") else pick(("layers", "planes", "blobs"))
        shape = "blob" if kind == "blobs" else pick(("ellipse", "polygon", "blob"))
        mask = _shape_mask(h, w, rng, shape)
        if mode == "segments":
            mask = covered_segments(mask, segments, 0.5)
        value = plane(level, rng.uniform(0.02, 0.12)) if kind == "planes" else np.full((h, w), level, np.float32)
        disp = np.where(mask, np.maximum(value, disp), disp)  # nearer surfaces occlude
    return np.clip(disp, 0.0, 1.0).astype(np.float32)
