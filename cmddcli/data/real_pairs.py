"""Real defocus pairs as random training crops, and a dataset that mixes them with synthetic pairs.

:class:`RealCropDataset` serves random ``patch``² crops of real blurred / sharp pairs (DPDD-like: a
wide-aperture shot and a stopped-down one of the same scene):

- every pair is decoded once per process (loader worker) and kept as 8- or 16-bit samples;
- random horizontal / vertical flips and 90° rotations (the 8 symmetries of the square), both images
  alike;
- crops prefer blur: most of the frame of a DPDD pair is often in focus in both shots, and such a
  crop teaches only the identity. Each pair gets a *blur score* per ``block``² block, the detail the
  sharp image has and the blurred one lacks (:func:`blur_score_blocks`); a crop is drawn with
  probability proportional to its blocks' mean score with chance ``blur_bias``, uniformly otherwise
  (so the network still sees in-focus regions and keeps them unchanged);
- ``aspect = "dpdd_3x2"`` resizes each pair back to DPDD's 3:2 frame before cropping, by shrinking
  its height (1024 -> 683 for the 1024² copies, Pillow's Lanczos on both images alike): those copies
  were squashed from 1680x1120 to 1024x1024, which turns every round blur disk into an ellipse about
  0.67 as wide as it is tall, and shrinking the height makes the disks round again (at 0.61 of DPDD's
  scale) without interpolating new detail into the sharp target. ``"as_is"`` keeps the pixels.
- ``register = "pixel"`` moves the sharp image by the whole-pixel part of its global shift against
  the blurred one, measured once per pair by phase correlation (scikit-image's
  ``phase_cross_correlation``, Guizar-Sicairos et al., Opt. Lett. 2008, upsampled 10x, on grey
  images) and both images are trimmed to their overlap. DPDD's two shots are taken one after the
  other and some pairs are misregistered by up to ~3.6 px (measured on the 60 pairs of
  ``dpdd_train/``: 8 of them by 0.8 px or more); an L1 loss against a shifted target teaches the
  network to blur and move edges, not to sharpen them. Whole-pixel moves interpolate nothing, so
  the target's detail is kept; what is left is under half a pixel per axis. ``"none"`` keeps the
  pairs as stored.

:class:`MixedDataset` draws each sample from a real-pair dataset with probability ``real_share`` and
from a synthetic one (:class:`~cmddcli.data.datasets.SynthDataset`) otherwise; both take their
randomness from the sample's own seed, so a run is reproducible and resumable as with one dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..photo.arrays import read_image, to_float
from .datasets import _Seeded, _to_tensor

__all__ = ["REAL_ASPECTS", "REAL_REGISTERS", "RealPair", "pair_shift", "register_pixel", "blur_score_blocks", "RealCropDataset", "MixedDataset", "dpdd_3x2_height", "real_pairs_from"]

REAL_ASPECTS = ("as_is", "dpdd_3x2")
REAL_REGISTERS = ("none", "pixel")
DPDD_FRAME = (1680, 1120)  # DPDD's full frame (Abuolaim & Brown, ECCV 2020), width x height


@dataclass(frozen=True)
class RealPair:
    """One real pair: ``source`` (blurred) and ``target`` (sharp) image paths, of one size."""

    name: str
    source: str
    target: str


def dpdd_3x2_height(width: int) -> int:
    """The height (px) of a ``width``-wide image in DPDD's 3:2 frame: round(width · 1120 / 1680)."""
    return int(round(width * DPDD_FRAME[1] / DPDD_FRAME[0]))


def _gray(img: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an (H, W[, 3]) image, float32 in [0, 1] (the sharp-tile filter's grey)."""
    f = to_float(img)
    return (f[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.float32) if f.ndim == 3 else f


def blur_score_blocks(blurred: np.ndarray, sharp: np.ndarray, block: int = 32) -> np.ndarray:
    """Per ``block``² block, how much fine detail ``sharp`` has that ``blurred`` lacks: the standard
    deviation of the 3×3 Laplacian of the grey sharp image minus that of the blurred one (block
    interiors, as the sharp-tile filter measures it: :func:`cmddcli.data.sources.block_sharpness`),
    clipped at 0.

    Args: two (H, W[, 3]) images of one size (8/16-bit or float in [0, 1]); ``block`` in pixels.
    Returns: (H // block, W // block) float32, >= 0 (0 where both are equally sharp or flat).
    """
    from .sources import _laplacian_std_blocks

    if blurred.shape[:2] != sharp.shape[:2]:
        raise ValueError(f"image sizes differ: {blurred.shape[:2]} vs {sharp.shape[:2]}")
    lost = _laplacian_std_blocks(_gray(sharp), block) - _laplacian_std_blocks(_gray(blurred), block)
    return np.maximum(lost, 0.0).astype(np.float32)


def pair_shift(blurred: np.ndarray, sharp: np.ndarray, upsample: int = 10) -> tuple[float, float]:
    """The global (dy, dx) shift, in pixels, that moves ``sharp`` onto ``blurred``: ``sharp[y - dy, x -
    dx]`` shows what ``blurred[y, x]`` shows. Phase correlation of the grey images (scikit-image's
    ``phase_cross_correlation``, Guizar-Sicairos, Thurman & Fienup, Opt. Lett. 33(2), 2008) to
    1 / ``upsample`` px. The whitened correlation is led by fine detail, i.e. by what is in focus in
    both shots (a DPDD pair always holds its focused subject); a frame blurred all over correlates to
    the PSF's broad plateau and its shift is not reliable (measured: a 9 px box blur on noise texture).

    Args: two (H, W[, 3]) images of one size (8/16-bit or float in [0, 1]).
    Raises: ValueError when the sizes differ.
    """
    from skimage.registration import phase_cross_correlation

    if blurred.shape[:2] != sharp.shape[:2]:
        raise ValueError(f"image sizes differ: {blurred.shape[:2]} vs {sharp.shape[:2]}")
    shift, _, _ = phase_cross_correlation(_gray(blurred), _gray(sharp), upsample_factor=upsample)
    return float(shift[0]), float(shift[1])


def register_pixel(blurred: np.ndarray, sharp: np.ndarray, shift: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``blurred`` and ``sharp`` trimmed to their overlap after moving ``sharp`` by ``shift`` (dy, dx)
    rounded to whole pixels (:func:`pair_shift`'s convention); no pixel is interpolated. Returns two
    views of shape (H - |dy|, W - |dx|[, C]) where the rounded shift is (dy, dx)."""
    dy, dx = (int(round(v)) for v in shift)
    h, w = blurred.shape[:2]
    b = blurred[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
    s = sharp[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return b, s


def _resize_height(img: np.ndarray, height: int) -> np.ndarray:
    """``img`` (H, W[, C], uint8 or uint16) resized to ``height`` rows, Lanczos (Pillow), per channel."""
    from PIL import Image

    w = img.shape[1]
    planes = img[..., None] if img.ndim == 2 else img
    out = []
    for c in range(planes.shape[-1]):
        p = planes[..., c]
        mode = "I;16" if p.dtype == np.uint16 else "L"
        im = Image.fromarray(np.ascontiguousarray(p), mode=mode) if mode == "L" else \
            Image.fromarray(np.ascontiguousarray(p.astype(np.int32)), mode="I")
        r = np.asarray(im.resize((w, height), Image.LANCZOS))
        out.append(np.clip(r, 0, 65535).astype(p.dtype) if p.dtype == np.uint16 else r.astype(np.uint8))
    res = np.stack(out, -1)
    return res if img.ndim == 3 else res[..., 0]


def _symmetry(rng: np.random.Generator, *imgs: np.ndarray) -> list[np.ndarray]:
    """One of the 8 symmetries of the square (flips and 90° rotations), the same for all ``imgs``."""
    k = int(rng.integers(4))
    flip = rng.uniform() < 0.5
    out = []
    for a in imgs:
        a = np.rot90(a, k, axes=(0, 1))
        out.append(a[:, ::-1] if flip else a)
    return out


class RealCropDataset(_Seeded):
    """Random ``patch_size``² crops of real blurred / sharp pairs (module docstring).

    Args:
        pairs: the pairs (each source and target of one size, RGB or grey, 8/16-bit or float).
        patch_size: crop side (px); every pair (after ``aspect``) must be at least this large.
        seed: base seed (samples are seeded per index by :class:`~cmddcli.train.sampling.SeededDataset`).
        flips: draw one of the 8 square symmetries per crop (else none).
        aspect: ``"as_is"`` or ``"dpdd_3x2"`` (:data:`REAL_ASPECTS`).
        register: ``"none"`` or ``"pixel"`` (:data:`REAL_REGISTERS`; module docstring), after ``aspect``.
        blur_bias: chance (0..1) that a crop is drawn in proportion to its blur score instead of uniformly.
        block: side (px) of the blur-score blocks.
        length: samples per epoch (default: 8 crops per pair).

    Returns per item ``(blurred, sharp)``, float32 (3, P, P) in [0, 1]. Raises InputError naming the
    file for an unreadable pair, one whose images differ in size, or one smaller than the crop.
    """

    def __init__(self, pairs: Sequence[RealPair], patch_size: int = 256, seed: int = 0, flips: bool = True,
                 aspect: str = "as_is", blur_bias: float = 0.75, block: int = 32, length: int | None = None,
                 register: str = "none"):
        if not pairs:
            raise InputError("pairs", "no real pairs given")
        if aspect not in REAL_ASPECTS:
            raise ValueError(f"aspect must be one of {', '.join(REAL_ASPECTS)}, got {aspect!r}")
        if register not in REAL_REGISTERS:
            raise ValueError(f"register must be one of {', '.join(REAL_REGISTERS)}, got {register!r}")
        if not 0.0 <= blur_bias <= 1.0:
            raise ValueError(f"blur_bias must be in [0, 1], got {blur_bias}")
        self.pairs = list(pairs)
        self.patch_size, self.seed, self.flips = int(patch_size), int(seed), flips
        self.aspect, self.blur_bias, self.block, self.register = aspect, float(blur_bias), int(block), register
        self.length = int(length) if length is not None else 8 * len(self.pairs)
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # per process
        self.shifts: dict[int, tuple[float, float]] = {}  # per process: pair_shift of each decoded pair

    def __len__(self) -> int:
        return self.length

    def __getstate__(self):  # loader workers decode for themselves; never pickle the decoded pixels
        state = dict(self.__dict__)
        state["_decoded"] = {}
        return state

    def decoded(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pair ``i`` as (blurred, sharp, crop weights): the images as stored (after ``aspect``) and, per
        possible crop origin on the block grid, the crop's mean blur score ((H - P) // block + 1,
        (W - P) // block + 1), float64. With ``register = "pixel"`` the images are the registered
        overlap (:func:`register_pixel`) and the measured shift is kept in ``shifts[i]``. Decoded once
        per process."""
        if i not in self._decoded:
            pair = self.pairs[i]
            src, tgt = read_image(pair.source), read_image(pair.target)
            if src.shape != tgt.shape:
                raise InputError(pair.target, f"size {tgt.shape[1]}x{tgt.shape[0]} differs from the blurred "
                                              f"image's {src.shape[1]}x{src.shape[0]}")
            if self.aspect == "dpdd_3x2":
                h = dpdd_3x2_height(src.shape[1])
                src, tgt = _resize_height(src, h), _resize_height(tgt, h)
            if self.register == "pixel":
                self.shifts[i] = pair_shift(src, tgt)
                src, tgt = register_pixel(src, tgt, self.shifts[i])
            p = self.patch_size
            if src.shape[0] < p or src.shape[1] < p:
                raise InputError(pair.source, f"image {src.shape[1]}x{src.shape[0]} is smaller than the {p}px patch")
            score = blur_score_blocks(src, tgt, self.block).astype(np.float64)
            k = max(1, p // self.block)  # blocks per crop side
            ny, nx = (src.shape[0] - p) // self.block + 1, (src.shape[1] - p) // self.block + 1
            integral = np.pad(score.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            ys, xs = np.arange(ny)[:, None], np.arange(nx)[None, :]
            ye, xe = np.minimum(ys + k, score.shape[0]), np.minimum(xs + k, score.shape[1])
            sums = integral[ye, xe] - integral[ys, xe] - integral[ye, xs] + integral[ys, xs]
            self._decoded[i] = (src, tgt, sums / (k * k))
        return self._decoded[i]

    def crop_origin(self, i: int, rng: np.random.Generator) -> tuple[int, int]:
        """The (y, x) origin of a crop of pair ``i``: blur-weighted with chance ``blur_bias``, else uniform."""
        src, _, weights = self.decoded(i)
        p, h, w = self.patch_size, src.shape[0], src.shape[1]
        if rng.uniform() < self.blur_bias and weights.sum() > 0:
            flat = weights.ravel() / weights.sum()
            cell = int(rng.choice(flat.size, p=flat))
            gy, gx = divmod(cell, weights.shape[1])
            y = min(gy * self.block + int(rng.integers(self.block)), h - p)  # jitter within the block
            x = min(gx * self.block + int(rng.integers(self.block)), w - p)
            return y, x
        return int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.rng_for(index)
        i = int(rng.integers(len(self.pairs)))
        src, tgt, _ = self.decoded(i)
        y, x = self.crop_origin(i, rng)
        p = self.patch_size
        a, b = src[y:y + p, x:x + p], tgt[y:y + p, x:x + p]
        if self.flips:
            a, b = _symmetry(rng, a, b)
        fa, fb = to_float(np.ascontiguousarray(a)), to_float(np.ascontiguousarray(b))
        if fa.ndim == 2:
            fa, fb = np.repeat(fa[..., None], 3, -1), np.repeat(fb[..., None], 3, -1)
        return _to_tensor(fa[..., :3]), _to_tensor(fb[..., :3])


class MixedDataset(_Seeded):
    """Each sample from ``real`` with probability ``real_share``, else from ``synth`` (module docstring).

    Both datasets must have an ``rng_for`` hook (:class:`RealCropDataset`, ``SynthDataset``); the
    sample's generator picks the source and a seed for it. ``len`` is ``len(synth)``.
    """

    def __init__(self, real: _Seeded, synth: _Seeded, real_share: float, seed: int = 0):
        if not 0.0 <= real_share <= 1.0:
            raise ValueError(f"real_share must be in [0, 1], got {real_share}")
        self.real, self.synth, self.real_share, self.seed = real, synth, float(real_share), int(seed)

    def __len__(self) -> int:
        return len(self.synth)

    def __getitem__(self, index: int):
        rng = self.rng_for(index)
        use_real = rng.uniform() < self.real_share
        child = self.real if use_real else self.synth
        child_seed = int(rng.integers(2**63 - 1))
        child.rng_for = lambda _i: np.random.default_rng(child_seed)  # this item only
        try:
            return child[index % len(child)]
        finally:
            del child.rng_for


def real_pairs_from(path: str | os.PathLike) -> list[RealPair]:
    """The pairs of a folder of real pairs (``blur/`` + ``sharp/``, ``source/`` + ``target/``, a DPDD
    tree's ``train`` split, a manifest...; :func:`~cmddcli.data.discovery.find_pairs`). Raises
    InputError when it holds none."""
    from .discovery import find_pairs

    items, _ = find_pairs(path, "train")
    if not items:
        raise InputError(path, "no real pairs found")
    return [RealPair(it.name, str(Path(it.source)), str(Path(it.target))) for it in items]
