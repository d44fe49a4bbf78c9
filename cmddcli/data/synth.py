"""A defocus synthesiser: blurred/sharp pairs with spatially varying, depth-dependent disk blur.

Pipeline for one sharp sRGB image (float32 HxWx3 in [0, 1]):

1. a random depth map, stored as disparity ``d = 1/z`` scaled to [0, 1] (1 = nearest, 0 = far):
   a background (constant or a tilted plane) and a few occluding objects (ellipses, polygons,
   smooth blobs; constant or tilted), painted far to near;
2. a thin-lens circle of confusion: radius ``r = K · |d − d_focus|`` pixels, i.e. proportional
   to ``|1/z − 1/z_focus|`` (the thin-lens CoC diameter ``A·f/(z_f − f) · |z − z_f| / z`` at a fixed
   focus distance). ``K`` is set so that the largest radius in the image equals a sampled
   ``max_coc``;
3. rendering in linear light (sRGB decode → blur → encode) by depth slices composited back to front:
   the disparity range is cut into slices whose radii differ by at most ``radius_step`` px; each
   slice's premultiplied colour and its alpha mask are blurred with the slice's disk PSF (FFT
   convolution), then laid "over" what is behind it, and the sum is normalised by the accumulated
   alpha. A sharp foreground is therefore never covered by blurred background, a blurred background
   never picks up foreground colour, and a blurred foreground spreads over what is behind it;
4. optionally Poisson–Gaussian sensor noise (in linear light) and a JPEG round trip.

Everything random comes from one ``numpy.random.Generator``: the same seed gives the same bytes.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

DEPTH_MODES = ("layers", "planes", "blobs", "mixed")


@dataclass(frozen=True)
class SynthConfig:
    """Ranges are sampled uniformly per image.

    Args:
        max_coc: radius (px) of the largest circle of confusion in the image.
        focus_in_scene: probability that the focal plane lies inside the scene's depth range
            (otherwise in front of the nearest or behind the farthest point: all of it blurred).
        depth: "layers" (constant-depth layers), "planes" (tilted planes), "blobs" (smooth shapes),
            or "mixed" (each object any of these).
        n_objects: number of occluding objects in front of the background.
        soft_edge: extra width (px) of the disk rim's ramp; 0 gives an anti-aliased disk.
        antialias: False gives a hard 0/1 disk (only with soft_edge 0).
        radius_step: largest CoC difference (px) between neighbouring depth slices.
        max_slices: upper bound on the number of depth slices (each costs one FFT convolution).
        noise_prob: probability of Poisson–Gaussian noise on the blurred image.
        photons: photons at full scale (the Poisson part; fewer = noisier).
        read_noise: standard deviation of the Gaussian part, in linear units.
        jpeg_prob: probability of a JPEG round trip of the blurred image.
        jpeg_quality: JPEG quality range.
        linear_light: blur in linear light (sRGB decode/encode around the blur).
    """

    max_coc: tuple[float, float] = (2.0, 16.0)
    focus_in_scene: float = 0.85
    depth: str = "mixed"
    n_objects: tuple[int, int] = (1, 5)
    soft_edge: float = 0.0
    antialias: bool = True
    radius_step: float = 0.5
    max_slices: int = 40
    noise_prob: float = 0.0
    photons: tuple[float, float] = (500.0, 4000.0)
    read_noise: tuple[float, float] = (0.0005, 0.004)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (75, 95)
    linear_light: bool = True

    def __post_init__(self):
        if self.depth not in DEPTH_MODES:
            raise ValueError(f"depth must be one of {DEPTH_MODES}, got {self.depth!r}")
        if self.max_coc[0] < 0 or self.max_coc[1] < self.max_coc[0]:
            raise ValueError(f"max_coc must be an increasing pair of non-negative radii, got {self.max_coc}")
        if self.radius_step <= 0 or self.max_slices < 1:
            raise ValueError("radius_step must be > 0 and max_slices >= 1")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SynthSample:
    blurred: np.ndarray  # (H, W, 3) float32 sRGB in [0, 1]
    sharp: np.ndarray  # (H, W, 3) float32 sRGB in [0, 1] (the input, unchanged)
    disparity: np.ndarray  # (H, W) float32 in [0, 1], 1 = nearest
    coc: np.ndarray  # (H, W) float32 CoC radius in px per pixel
    params: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# colour


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1.0 / 2.4) - 0.055).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# the PSF and the layered renderer


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
    counts = np.bincount(labels.ravel(), minlength=n)
    sums = np.bincount(labels.ravel(), weights=disparity.ravel().astype(np.float64), minlength=n)
    present = np.nonzero(counts)[0]
    remap = np.full(n, -1, np.int64)
    remap[present] = np.arange(len(present))
    d = sums[present] / counts[present]
    return remap[labels], d, coc_scale * np.abs(d - focus)


def render_defocus(linear: np.ndarray, disparity: np.ndarray, focus: float, coc_scale: float,
                   soft_edge: float = 0.0, antialias: bool = True, radius_step: float = 0.5,
                   max_slices: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Layered defocus of a linear-light image (H, W, 3) for a disparity map (H, W).

    CoC radius = ``coc_scale · |disparity − focus|`` px. Returns (blurred (H, W, 3), coc (H, W)).
    Pixels whose slice radius is < 0.5 px are copied exactly.
    """
    h, w, _ = linear.shape
    labels, d, radii = slice_disparity(disparity, coc_scale, focus, radius_step, max_slices)
    kernels = [disk_kernel(float(r), soft_edge, antialias) for r in radii]
    pad = max(k.shape[0] // 2 for k in kernels) + 1
    if pad > 1:
        # reflect-pad by the largest kernel radius (no wrap-around reaches the kept centre), and a
        # little more at the bottom/right to reach a fast FFT size
        ph, pw = _fast_len(h + 2 * pad) - h - pad, _fast_len(w + 2 * pad) - w - pad
        img_p = np.pad(linear, ((pad, ph), (pad, pw), (0, 0)), mode="reflect")
        lab_p = np.pad(labels, ((pad, ph), (pad, pw)), mode="reflect")
    else:
        img_p, lab_p = linear, labels
    img_t = torch.from_numpy(np.ascontiguousarray(img_p.transpose(2, 0, 1), dtype=np.float32))  # (3, Hp, Wp)
    lab_t = torch.from_numpy(lab_p)
    acc_c = torch.zeros_like(img_t)
    acc_a = torch.zeros_like(img_t[:1])
    for s in range(len(d)):  # far to near
        mask = (lab_t == s).to(torch.float32)[None]  # (1, Hp, Wp)
        layer = torch.cat([img_t * mask, mask])  # premultiplied colour + alpha, (4, Hp, Wp)
        if kernels[s].shape[0] > 1:
            layer = _fft_blur(layer, kernels[s]).clamp_(min=0.0)
        alpha = layer[3:].clamp(max=1.0)
        acc_c = acc_c * (1.0 - alpha) + layer[:3]
        acc_a = acc_a * (1.0 - alpha) + alpha
    out = acc_c / acc_a.clamp(min=1e-6)
    out = out[:, pad:pad + h, pad:pad + w] if pad > 1 else out
    coc = radii[labels].astype(np.float32)
    return out.permute(1, 2, 0).numpy().astype(np.float32), coc


# --------------------------------------------------------------------------------------------------
# random depth


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


def random_disparity(h: int, w: int, rng: np.random.Generator, mode: str = "mixed",
                     n_objects: tuple[int, int] = (1, 5)) -> np.ndarray:
    """A random layered disparity map (H, W) float32 in [0, 1] (1 = nearest)."""
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
        kind = mode if mode != "mixed" else pick(("layers", "planes", "blobs"))
        shape = "blob" if kind == "blobs" else pick(("ellipse", "polygon", "blob"))
        mask = _shape_mask(h, w, rng, shape)
        value = plane(level, rng.uniform(0.02, 0.12)) if kind == "planes" else np.full((h, w), level, np.float32)
        disp = np.where(mask, np.maximum(value, disp), disp)  # nearer surfaces occlude
    return np.clip(disp, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# sensor noise and JPEG


def add_sensor_noise(linear: np.ndarray, rng: np.random.Generator, photons: float, read_noise: float) -> np.ndarray:
    """Poisson–Gaussian noise: Poisson(x · photons) / photons + N(0, read_noise²), clipped to [0, 1]."""
    shot = rng.poisson(np.clip(linear, 0, 1).astype(np.float64) * photons) / photons
    out = shot + rng.normal(0.0, read_noise, linear.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def jpeg_roundtrip(srgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode as 8-bit JPEG (4:2:0) and decode; float32 sRGB in, float32 sRGB out."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(srgb, 0, 1) * 255).astype(np.uint8)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).astype(np.float32) / 255.0


# --------------------------------------------------------------------------------------------------
# one pair


def synthesize(sharp: np.ndarray, rng: np.random.Generator | int, config: SynthConfig = SynthConfig(),
               disparity: np.ndarray | None = None, focus: float | None = None,
               max_coc: float | None = None) -> SynthSample:
    """Make one blurred/sharp pair from a sharp sRGB float image (H, W, 3) in [0, 1].

    ``disparity``, ``focus`` and ``max_coc`` override the random choices (tests, demos).
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    sharp = np.ascontiguousarray(sharp, dtype=np.float32)
    if sharp.ndim != 3 or sharp.shape[2] != 3:
        raise ValueError(f"sharp must be (H, W, 3), got {sharp.shape}")
    h, w, _ = sharp.shape
    if disparity is None:
        disparity = random_disparity(h, w, rng, config.depth, config.n_objects)
    dmin, dmax = float(disparity.min()), float(disparity.max())
    if focus is None:
        if rng.uniform() < config.focus_in_scene or dmax - dmin < 1e-6:
            focus = float(rng.uniform(dmin, dmax))
        else:  # focused in front of the nearest or behind the farthest surface
            focus = float(rng.uniform(dmax, 1.0)) if rng.uniform() < 0.5 else float(rng.uniform(0.0, dmin))
    if max_coc is None:
        max_coc = float(rng.uniform(*config.max_coc))
    # K such that the farthest point from the focal plane gets max_coc; a scene that hardly leaves
    # the focal plane (float rounding of a flat map included) stays (almost) sharp
    reach = max(abs(dmax - focus), abs(dmin - focus))
    coc_scale = max_coc / max(reach, 1e-3)

    base = srgb_to_linear(sharp) if config.linear_light else sharp
    blurred, coc = render_defocus(base, disparity, focus, coc_scale, config.soft_edge, config.antialias,
                                  config.radius_step, config.max_slices)
    params: dict[str, Any] = {"focus": focus, "max_coc": max_coc, "coc_scale": coc_scale}
    if config.noise_prob > 0 and rng.uniform() < config.noise_prob:
        photons, read = float(rng.uniform(*config.photons)), float(rng.uniform(*config.read_noise))
        lin = blurred if config.linear_light else srgb_to_linear(blurred)
        lin = add_sensor_noise(lin, rng, photons, read)
        blurred = lin if config.linear_light else linear_to_srgb(lin)
        params.update(photons=photons, read_noise=read)
    out = linear_to_srgb(blurred) if config.linear_light else np.clip(blurred, 0, 1).astype(np.float32)
    if config.jpeg_prob > 0 and rng.uniform() < config.jpeg_prob:
        q = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        out = jpeg_roundtrip(out, q)
        params["jpeg_quality"] = q
    return SynthSample(blurred=out, sharp=sharp, disparity=disparity.astype(np.float32), coc=coc, params=params)
