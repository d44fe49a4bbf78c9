"""A defocus synthesiser: blurred/sharp pairs with spatially varying, depth-dependent disk blur.

Pipeline for one sharp sRGB image (float32 HxWx3 in [0, 1]):

1. a random depth map (:mod:`.depth`), stored as disparity ``d = 1/z`` scaled to [0, 1] (1 = nearest,
   0 = far): a background and a few occluding objects, painted far to near;
2. a thin-lens circle of confusion: radius ``r = K · |d − d_focus|`` pixels, i.e. proportional
   to ``|1/z − 1/z_focus|`` (the thin-lens CoC diameter ``A·f/(z_f − f) · |z − z_f| / z`` at a fixed
   focus distance). ``K`` is set so that the largest radius in the image equals a sampled
   ``max_coc``;
3. rendering in linear light (sRGB decode → blur → encode) by depth slices composited back to front
   (:mod:`.render`), each slice blurred with its PSF (:mod:`.psf`), so a sharp foreground is never
   covered by blurred background and a blurred foreground spreads over what is behind it;
4. optionally Poisson–Gaussian sensor noise (in linear light), a JPEG round trip and a palette
   (GIF) round trip.

Everything random comes from one ``numpy.random.Generator``: the same seed gives the same bytes.

Version 2 (``SYNTH_PRESETS["v2"]``, docs/synthetic_defocus.md) adds, each a :class:`SynthConfig` field
whose default keeps the version 1 output (``SYNTH_PRESETS["v1"]`` gives the old bytes):

- a family of PSF shapes (:class:`PSFShape`, :func:`psf_kernel`): bright or soft rims, apodisation,
  Gaussian-like softening, cat's-eye vignetting, per-channel radii; polygonal and ring apertures are
  kept out of v2 for a held-out validation (``"heldout"``);
- PSFs integrated over ``supersample``² sub-pixels (anti-aliased as if rendered at a higher
  resolution and downscaled);
- a target with residual blur (``target_residual``: the aperture ratio, 4/22 for DPDD) plus
  diffraction;
- depth layers whose outlines follow image segments (``depth="segments"``, Felzenszwalb);
- heavy-tailed blur sizes (``max_coc_dist="lognormal"``), coarser slices for large radii
  (``radius_step_rel``), and synthesis on a crop with a margin of real image around the patch.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..photo.samples import from_float, to_float
from ..photo.samples import linear_to_srgb, srgb_to_linear
from .depth import DEPTH_MODES, random_disparity, segment_image
from .psf import AIRY_SIGMA_PER_DIAMETER, PSF_KINDS, PSFShape, disk_kernel, gaussian_kernel, psf_kernel, psf_kernels_rgb
from .render import render_defocus, slice_disparity

# Names of the synthesiser's parts, importable from here as from their own modules.
__all__ = [
    "AIRY_SIGMA_PER_DIAMETER", "DEPTH_MODES", "PSF_KINDS", "PSFShape", "SYNTH_PRESETS", "SynthConfig", "SynthSample",
    "add_sensor_noise", "disk_kernel", "encode_jpeg", "gaussian_kernel", "jpeg_roundtrip", "linear_to_srgb",
    "palette_roundtrip", "psf_kernel", "psf_kernels_rgb", "random_disparity", "render_defocus", "sample_psf_shape",
    "segment_image", "slice_disparity", "srgb_to_linear", "synth_preset", "synthesize",
]


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
        palette_prob: probability of a palette round trip of the blurred image (GIF's at most 256
            colours, after the JPEG step): median-cut palette of the patch, then the patch mapped onto it.
        palette_colors: range of the palette size, sampled log-uniformly. A 256² patch needs about half
            the colours of a 1024-px photo for the same error (on ten of the sharp sources a 256² crop on
            128 colours is within ~1 dB of the 1024-px photo on 256; training/ablation.md,
            "Colour quantisation"), hence 32-256.
        palette_dither: probability of Floyd–Steinberg error diffusion onto the palette (else about the
            nearest colour, :func:`palette_roundtrip`).
        linear_light: blur in linear light (sRGB decode/encode around the blur).
        max_coc_dist: "uniform" in ``max_coc``, or "lognormal" (median ``max_coc_median``, log-sd
            ``max_coc_sigma``) truncated to ``max_coc``: mostly small blur with a heavy tail.
        psf_family: (kind, probability) pairs, kinds from ``PSF_KINDS``; one shape per image.
        supersample: PSFs are integrated over supersample² sub-pixels (1 = the v1 disk).
        chroma_prob, chroma_spread: probability of per-channel radii, and the largest relative
            difference: R and B radii are ``r·(1 ∓ δ)``, ``|δ| <= chroma_spread``.
        catseye: strength of cat's-eye vignetting at the frame corner (0 = none); the patch gets a
            random position in a virtual frame, the strength grows with its radius squared.
        target_residual: the target's CoC as a fraction of the input's (the aperture ratio; 0 = a
            perfectly sharp target, 4/22 = DPDD's f/22 target for an f/4 input).
        diffraction: Airy disk diameter (px) of the target (DPDD: about 1.4 px at 1680 px width);
            rendered as a Gaussian with sigma = 0.172 · diameter.
        radius_step_rel: if > 0, slices may also differ by this fraction of their radius (fewer
            slices for large blur, where 0.5 px is invisible).
        segment_scale: range of Felzenszwalb's ``scale`` for ``depth="segments"``.
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
    palette_prob: float = 0.0
    palette_colors: tuple[int, int] = (32, 256)
    palette_dither: float = 0.5
    linear_light: bool = True
    max_coc_dist: str = "uniform"
    max_coc_median: float = 6.0
    max_coc_sigma: float = 0.6
    psf_family: tuple[tuple[str, float], ...] = (("disk", 1.0),)
    supersample: int = 1
    chroma_prob: float = 0.0
    chroma_spread: float = 0.0
    catseye: float = 0.0
    target_residual: float = 0.0
    diffraction: float = 0.0
    radius_step_rel: float = 0.0
    segment_scale: tuple[float, float] = (60.0, 300.0)

    def __post_init__(self):
        object.__setattr__(self, "psf_family", tuple((str(k), float(p)) for k, p in self.psf_family))
        bad = [k for k, _ in self.psf_family if k not in PSF_KINDS]
        probs = [p for _, p in self.psf_family]
        if bad or not probs or min(probs) < 0 or sum(probs) <= 0:
            raise ValueError(f"psf_family must be (kind, probability) pairs with kinds from {PSF_KINDS} and a "
                             f"positive total, got {self.psf_family}")
        if self.max_coc_dist not in ("uniform", "lognormal"):
            raise ValueError(f"max_coc_dist must be uniform or lognormal, got {self.max_coc_dist!r}")
        lo, hi = self.palette_colors
        if not 2 <= lo <= hi <= 256 or not 0 <= self.palette_prob <= 1 or not 0 <= self.palette_dither <= 1:
            raise ValueError(f"palette_colors must satisfy 2 <= lo <= hi <= 256 and palette_prob, palette_dither "
                             f"lie in [0, 1], got {self.palette_colors}, {self.palette_prob}, {self.palette_dither}")
        if self.supersample < 1 or self.target_residual < 0 or self.diffraction < 0 or self.catseye < 0:
            raise ValueError("supersample must be >= 1; target_residual, diffraction and catseye >= 0")
        if self.depth not in DEPTH_MODES:
            raise ValueError(f"depth must be one of {DEPTH_MODES}, got {self.depth!r}")
        if self.max_coc[0] < 0 or self.max_coc[1] < self.max_coc[0]:
            raise ValueError(f"max_coc must be an increasing pair of non-negative radii, got {self.max_coc}")
        if self.radius_step <= 0 or self.max_slices < 1:
            raise ValueError("radius_step must be > 0 and max_slices >= 1")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def legacy(self) -> bool:
        """True when no v2 feature is on: synthesis runs the v1 code path (v1's bytes)."""
        return (self.psf_family == (("disk", 1.0),) and self.supersample == 1 and self.chroma_prob == 0
                and self.catseye == 0 and self.target_residual == 0 and self.diffraction == 0
                and self.radius_step_rel == 0 and self.max_coc_dist == "uniform" and self.depth != "segments")

    @property
    def margin(self) -> int:
        """Pixels of real image wanted around a patch so that the largest blur sees no padding."""
        return 0 if self.legacy else int(math.ceil(self.max_coc[1] * (1 + self.chroma_spread))) + 2


@dataclass
class SynthSample:
    blurred: np.ndarray  # (H, W, 3) float32 sRGB in [0, 1]
    sharp: np.ndarray  # (H, W, 3) float32 sRGB in [0, 1] (the input, unchanged)
    disparity: np.ndarray  # (H, W) float32 in [0, 1], 1 = nearest
    coc: np.ndarray  # (H, W) float32 CoC radius in px per pixel
    params: dict[str, Any] = field(default_factory=dict)
    target: np.ndarray | None = None  # (H, W, 3) the training target; None = ``sharp`` (no residual blur)

    def __post_init__(self):
        if self.target is None:
            self.target = self.sharp


# --------------------------------------------------------------------------------------------------
# random PSF shapes


def sample_psf_shape(rng: np.random.Generator, config: "SynthConfig") -> PSFShape:
    """One random PSF shape from ``config.psf_family`` (with cat's eye and chroma per the config)."""
    kinds = [k for k, _ in config.psf_family]
    probs = np.array([p for _, p in config.psf_family], np.float64)
    kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
    rim, power, sigma, edge = 0.0, 4.0, 0.5, float(rng.uniform(0.0, 0.06))
    blades, rotation = 6, 0.0
    if kind == "rim":
        rim, power = float(rng.uniform(0.3, 2.0)), float(rng.uniform(2.0, 8.0))
    elif kind == "apodized":
        rim, edge = float(rng.uniform(0.3, 0.95)), float(rng.uniform(0.05, 0.2))
    elif kind == "gaussian":
        sigma, edge = float(rng.uniform(0.35, 0.7)), float(rng.uniform(0.1, 0.3))
    elif kind == "soft":
        edge = float(rng.uniform(0.15, 0.5))
    elif kind == "polygon":
        blades, rotation = int(rng.choice([5, 7])), float(rng.uniform(0, 2 * math.pi))  # odd: not point-symmetric
        rim, power = float(rng.uniform(0.0, 1.0)), float(rng.uniform(2.0, 6.0))
    cat = cat_angle = 0.0
    if config.catseye > 0:  # a random position in a virtual frame, uniform over its area
        fr, cat_angle = math.sqrt(float(rng.uniform())), float(rng.uniform(0, 2 * math.pi))
        cat = config.catseye * fr * fr
    chroma = 0.0
    if config.chroma_prob > 0 and rng.uniform() < config.chroma_prob:
        chroma = float(rng.uniform(-config.chroma_spread, config.chroma_spread))
    return PSFShape(kind, rim, power, sigma, edge, blades, rotation, cat, cat_angle, chroma)


# --------------------------------------------------------------------------------------------------
# sensor noise and JPEG


def add_sensor_noise(linear: np.ndarray, rng: np.random.Generator, photons: float, read_noise: float) -> np.ndarray:
    """Poisson–Gaussian noise: Poisson(x · photons) / photons + N(0, read_noise²), clipped to [0, 1]."""
    shot = rng.poisson(np.clip(linear, 0, 1).astype(np.float64) * photons) / photons
    out = shot + rng.normal(0.0, read_noise, linear.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def encode_jpeg(srgb: np.ndarray, quality: int) -> bytes:
    """(H, W, 3) float sRGB in [0, 1] -> 8-bit JPEG bytes (Pillow, ``quality``, 4:2:0)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(from_float(srgb)).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def jpeg_roundtrip(srgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode as 8-bit JPEG (:func:`encode_jpeg`) and decode; float32 sRGB in, float32 sRGB out."""
    from PIL import Image

    with Image.open(io.BytesIO(encode_jpeg(srgb, quality))) as im:
        return to_float(np.asarray(im.convert("RGB")))


def palette_roundtrip(srgb: np.ndarray, colors: int, dither: bool) -> np.ndarray:
    """Map an image onto a palette of at most ``colors`` colours, as a GIF stores it, and back to RGB.

    Args:
        srgb: (H, W, 3) float sRGB in [0, 1].
        colors: palette size, 2..256 (GIF's limit).
        dither: Floyd–Steinberg error diffusion onto the palette (else each pixel takes about the nearest
            colour: Pillow matches through a cache of 6 bits per channel).
    Returns: (H, W, 3) float32 sRGB in [0, 1], 8-bit levels. The palette is Pillow's median cut of the
    image itself (``Image.quantize``): one palette per image, as a GIF frame with its own colour table
    has (how DPDD's GIFs were encoded is not known).
    Raises: ValueError for an array that is not (H, W, 3) float or a palette size outside 2..256.
    """
    from PIL import Image

    if srgb.ndim != 3 or srgb.shape[2] != 3 or not np.issubdtype(srgb.dtype, np.floating):
        raise ValueError(f"palette_roundtrip needs a float (H, W, 3) image in [0, 1], got {srgb.dtype} {srgb.shape}")
    if not 2 <= int(colors) <= 256:
        raise ValueError(f"palette size must be 2..256, got {colors}")
    im = Image.fromarray(from_float(srgb))
    palette = im.quantize(colors=int(colors), method=Image.Quantize.MEDIANCUT)
    mapped = im.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG if dither else Image.Dither.NONE)
    return to_float(np.asarray(mapped.convert("RGB")))


# --------------------------------------------------------------------------------------------------
# one pair


def _sample_max_coc(rng: np.random.Generator, config: SynthConfig) -> float:
    lo, hi = config.max_coc
    if config.max_coc_dist == "uniform" or hi <= lo:
        return float(rng.uniform(lo, hi))
    for _ in range(64):  # truncated log-normal by rejection
        r = config.max_coc_median * math.exp(config.max_coc_sigma * float(rng.standard_normal()))
        if lo <= r <= hi:
            return r
    return float(rng.uniform(lo, hi))


def synthesize(sharp: np.ndarray, rng: np.random.Generator | int, config: SynthConfig = SynthConfig(),
               disparity: np.ndarray | None = None, focus: float | None = None,
               max_coc: float | None = None, margin: int = 0, psf: PSFShape | None = None,
               segments: np.ndarray | None = None) -> SynthSample:
    """Make one blurred/sharp pair from a sharp sRGB float image (H, W, 3) in [0, 1].

    ``disparity``, ``focus``, ``max_coc`` and ``psf`` override the random choices (tests, demos).
    ``margin``: ``sharp`` holds this many pixels of context on each side of the wanted patch; depth
    and blur use them, and every returned array is the central (H − 2·margin, W − 2·margin) part.
    ``segments``: (H, W) labels for ``depth="segments"`` (default: segment ``sharp`` here).
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    sharp = np.ascontiguousarray(sharp, dtype=np.float32)
    if sharp.ndim != 3 or sharp.shape[2] != 3:
        raise ValueError(f"sharp must be (H, W, 3), got {sharp.shape}")
    h, w, _ = sharp.shape
    if margin < 0 or 2 * margin >= min(h, w):
        raise ValueError(f"margin {margin} does not fit a {w}x{h} image")
    legacy = config.legacy and margin == 0 and psf is None
    if disparity is None:
        if config.depth == "segments":
            disparity = random_disparity(h, w, rng, config.depth, config.n_objects, sharp, config.segment_scale,
                                         segments)
        else:
            disparity = random_disparity(h, w, rng, config.depth, config.n_objects)
    dmin, dmax = float(disparity.min()), float(disparity.max())
    if focus is None:
        if rng.uniform() < config.focus_in_scene or dmax - dmin < 1e-6:
            focus = float(rng.uniform(dmin, dmax))
        else:  # focused in front of the nearest or behind the farthest surface
            focus = float(rng.uniform(dmax, 1.0)) if rng.uniform() < 0.5 else float(rng.uniform(0.0, dmin))
    if max_coc is None:
        max_coc = float(rng.uniform(*config.max_coc)) if legacy else _sample_max_coc(rng, config)
    # K such that the farthest point from the focal plane gets max_coc; a scene that hardly leaves
    # the focal plane (float rounding of a flat map included) stays (almost) sharp
    reach = max(abs(dmax - focus), abs(dmin - focus))
    coc_scale = max_coc / max(reach, 1e-3)

    base = srgb_to_linear(sharp) if config.linear_light else sharp
    params: dict[str, Any] = {"focus": focus, "max_coc": max_coc, "coc_scale": coc_scale}
    target = None
    if legacy:
        blurred, coc = render_defocus(base, disparity, focus, coc_scale, config.soft_edge, config.antialias,
                                      config.radius_step, config.max_slices)
    else:
        shape = psf if psf is not None else sample_psf_shape(rng, config)
        ss = config.supersample

        def kernel_fn(r: float) -> np.ndarray:
            return psf_kernels_rgb(r, shape, ss) if shape.chroma else psf_kernel(r, shape, ss)

        blurred, coc = render_defocus(base, disparity, focus, coc_scale, radius_step=config.radius_step,
                                      max_slices=config.max_slices, kernel_fn=kernel_fn,
                                      radius_step_rel=config.radius_step_rel, margin=margin)
        params["psf"] = asdict(shape)
        if config.target_residual > 0 or config.diffraction > 0:
            target = _residual_target(base, disparity, focus, coc_scale, config, margin)
            target = linear_to_srgb(target) if config.linear_light else np.clip(target, 0, 1).astype(np.float32)
        if margin:
            sl = (slice(margin, h - margin), slice(margin, w - margin))
            blurred, coc, disparity, sharp = blurred[sl], coc[sl], disparity[sl], sharp[sl]
            target = target[sl] if target is not None else None
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
    if config.palette_prob > 0 and rng.uniform() < config.palette_prob:
        lo, hi = config.palette_colors
        n = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
        dither = bool(rng.uniform() < config.palette_dither)
        out = palette_roundtrip(out, n, dither)
        params.update(palette_colors=n, palette_dither=dither)
    return SynthSample(blurred=np.ascontiguousarray(out), sharp=np.ascontiguousarray(sharp),
                       disparity=np.ascontiguousarray(disparity, dtype=np.float32), coc=np.ascontiguousarray(coc),
                       params=params, target=None if target is None else np.ascontiguousarray(target))


def _residual_target(base: np.ndarray, disparity: np.ndarray, focus: float, coc_scale: float,
                     config: SynthConfig, margin: int) -> np.ndarray:
    """The target through the stopped-down lens: CoC ``target_residual ×`` the input's (a disk: the small
    aperture of f/22), composited by depth like the input, then diffraction (a Gaussian fit of the Airy
    pattern) over the whole image. Linear light in, linear light out."""
    ss = config.supersample
    out = base
    if config.target_residual > 0:
        out, _ = render_defocus(base, disparity, focus, coc_scale * config.target_residual,
                                radius_step=config.radius_step, max_slices=config.max_slices,
                                kernel_fn=lambda r: psf_kernel(r, PSFShape(), ss), margin=margin)
    if config.diffraction > 0:
        k = gaussian_kernel(AIRY_SIGMA_PER_DIAMETER * config.diffraction, ss)
        half = k.shape[0] // 2
        padded = np.pad(out, ((half, half), (half, half), (0, 0)), mode="reflect")
        t = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))[:, None]  # (3, 1, H+2h, W+2h)
        out = torch.nn.functional.conv2d(t, torch.from_numpy(k)[None, None])[:, 0].permute(1, 2, 0).numpy()
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# presets

_V2 = dict(
    max_coc=(0.5, 20.0), max_coc_dist="lognormal", max_coc_median=6.0, max_coc_sigma=0.6,
    focus_in_scene=0.85, depth="segments", n_objects=(1, 5),
    psf_family=(("disk", 0.2), ("rim", 0.25), ("apodized", 0.2), ("gaussian", 0.15), ("soft", 0.2)),
    supersample=4, chroma_prob=0.5, chroma_spread=0.06, catseye=0.6,
    radius_step=0.5, radius_step_rel=0.15, max_slices=16,
    noise_prob=0.3, photons=(4000.0, 30000.0), read_noise=(0.0002, 0.001),
    jpeg_prob=0.05, jpeg_quality=(88, 98),
)

SYNTH_PRESETS: dict[str, tuple[SynthConfig, str]] = {
    "v1": (SynthConfig(max_coc=(1.0, 16.0)),
           "version 1: hard disk PSF, random shapes for depth, uniform max CoC 1-16 px, sharp target"),
    "v1_noisy": (SynthConfig(max_coc=(1.0, 16.0), **{k: _V2[k] for k in ("noise_prob", "photons", "read_noise",
                                                                        "jpeg_prob", "jpeg_quality")}),
                 "v1 with v2's mild Poisson-Gaussian noise (30 % of pairs) and rare JPEG (5 %): separates v1's "
                 "PSF and depth from v2's noise"),
    "v1_jpeg": (SynthConfig(max_coc=(1.0, 16.0), **{k: _V2[k] for k in ("noise_prob", "photons", "read_noise")},
                            jpeg_prob=0.4, jpeg_quality=(50, 95)),
                "v1_noisy with JPEG on 40 % of pairs at quality 50-95 (web photos): teaches the network not to "
                "sharpen compression artefacts"),
    "v1_jpeg_wide": (SynthConfig(max_coc=(2.0, 24.0), **{k: _V2[k] for k in ("noise_prob", "photons", "read_noise")},
                                 jpeg_prob=0.4, jpeg_quality=(50, 95)),
                     "v1_jpeg with larger blur: max CoC radius uniform 2-24 px; a disk-fit per tile "
                     "(scripts/blur_size_fit.py) finds 29 % of tiles at >= 10 px (v1_jpeg 15 %, the DPDD "
                     "validation pairs 36 %)"),
    "v1_jpeg_gif": (SynthConfig(max_coc=(1.0, 16.0), **{k: _V2[k] for k in ("noise_prob", "photons", "read_noise")},
                                jpeg_prob=0.4, jpeg_quality=(50, 95), palette_prob=0.3),
                    "v1_jpeg with a palette (GIF) round trip on 30 % of pairs (32-256 colours, half of them "
                    "dithered): teaches the network not to sharpen colour quantisation (banding, dither)"),
    "v2": (SynthConfig(**_V2),
           "disk / bright-rim / apodized / Gaussian-like / soft PSFs with cat's eye and per-channel radii, "
           "segment-following depth, heavy-tailed max CoC 0.5-20 px, mild noise, rare JPEG, sharp target"),
    "v2_dpdd": (SynthConfig(**{**_V2, "target_residual": 4.0 / 22.0, "diffraction": 1.4}),
                "v2 with DPDD's target: residual CoC 4/22 of the input's (f/22 vs f/4) plus a 1.4 px Airy disk"),
    "heldout": (SynthConfig(**{**_V2, "psf_family": (("polygon", 0.7), ("ring", 0.3))}),
                "v2 with PSF shapes v2 never uses (5- or 7-blade polygons, rings): validation only"),
}


def synth_preset(name: str, **overrides: Any) -> SynthConfig:
    """A named :class:`SynthConfig` (``SYNTH_PRESETS``), with field overrides."""
    if name not in SYNTH_PRESETS:
        raise ValueError(f"unknown synth preset {name!r}; choose from {', '.join(SYNTH_PRESETS)}")
    return dataclasses.replace(SYNTH_PRESETS[name][0], **overrides)
