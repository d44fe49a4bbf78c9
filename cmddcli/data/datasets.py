"""torch Datasets for training and evaluation.

Both datasets are reproducible independently of the DataLoader's worker count: sample ``index`` of
epoch ``epoch`` draws all its randomness from ``numpy.random.default_rng(seed + epoch·len + index)``.
Call :meth:`set_epoch` before each epoch (with ``persistent_workers=True`` the workers keep the value
they were started with, so prefer non-persistent workers or a fresh DataLoader per epoch).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from .manifest import Manifest, Pair, load_manifest
from ..photo.arrays import read_image, to_float
from .sources import SharpTile, load_sharp
from .synth import SynthConfig, SynthSample, segment_image, synthesize


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float -> (3, H, W) float32 contiguous."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))


def _random_flips(rng: np.random.Generator, *imgs: np.ndarray) -> list[np.ndarray]:
    out = list(imgs)
    if rng.uniform() < 0.5:
        out = [a[:, ::-1] for a in out]
    if rng.uniform() < 0.5:
        out = [a[::-1, :] for a in out]
    return out


class _Seeded(Dataset):
    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng_for(self, index: int) -> np.random.Generator:
        return np.random.default_rng(self.seed + self.epoch * len(self) + index)


class PairsDataset(_Seeded):
    """Blurred/sharp pairs from a manifest (8- or 16-bit PNG, also JPEG/TIFF), as float32 in [0, 1].

    ``patch_size`` None: full images, no flips (validation / evaluation). Otherwise the same random
    ``patch_size``² window of both images, with random horizontal / vertical flips if ``flips``.
    Returns ``(blurred, sharp)``, each (3, P, P) (or (3, H, W)).

    Args:
        manifest: a :class:`Manifest` or the path of one (file or folder).
        split: "train", "val" or "test"; None for all.
        subset: optional "indoor" / "outdoor" filter (DPDD test).
    """

    def __init__(self, manifest: Manifest | str | os.PathLike, split: str | None = "train",
                 patch_size: int | None = None, flips: bool = True, seed: int = 0, subset: str | None = None):
        self.manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        self.pairs: list[Pair] = self.manifest.pairs(split, subset)
        if not self.pairs:
            which = f"split {split!r}" + (f", subset {subset!r}" if subset else "")
            raise InputError(self.manifest.root, f"no pairs for {which}")
        self.split, self.patch_size, self.flips, self.seed = split, patch_size, flips, int(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.pairs]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pairs[index]
        src, tgt = read_image(pair.source), read_image(pair.target)
        if src.shape != tgt.shape:
            raise InputError(pair.target, f"size {tgt.shape[1]}x{tgt.shape[0]} differs from the source's "
                                          f"{src.shape[1]}x{src.shape[0]}")
        if self.patch_size is not None:
            rng = self.rng_for(index)
            p = self.patch_size
            h, w = src.shape[:2]
            if p > h or p > w:
                raise InputError(pair.source, f"image {w}x{h} is smaller than the {p}px patch")
            y, x = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
            src, tgt = src[y:y + p, x:x + p], tgt[y:y + p, x:x + p]
            if self.flips:
                src, tgt = _random_flips(rng, src, tgt)
        return _to_tensor(to_float(np.ascontiguousarray(src))), _to_tensor(to_float(np.ascontiguousarray(tgt)))


class SynthDataset(_Seeded):
    """Synthetic defocus pairs made on the fly from sharp photographs.

    Each sample: pick a source (a :class:`SharpTile`, or a whole image), take a random
    ``patch_size``² crop inside it (with ``config.margin`` pixels of context around it for v2 configs),
    random flips, then :func:`~cmddcli.data.synth.synthesize`. Returns ``(blurred, target)`` float32
    (3, P, P) in [0, 1]; the target is the sharp crop unless the config gives it residual blur.

    Args:
        sources: image paths, float (H, W, 3) arrays, or SharpTile regions (see
            :func:`~cmddcli.data.sources.find_sharp_tiles`; their coordinates refer to the image
            downscaled to the tile's own ``max_side``).
        max_side: longest side (px) to which image paths are downscaled (SharpTiles carry their own).
        length: samples per epoch (default: number of sources).
        cache_size: decoded images kept per worker (LRU).
    """

    def __init__(self, sources: Sequence[str | os.PathLike | np.ndarray | SharpTile], patch_size: int = 256,
                 config: SynthConfig = SynthConfig(), seed: int = 0, length: int | None = None, flips: bool = True,
                 max_side: int | None = 1600, cache_size: int = 16):
        if not len(sources):
            raise InputError("sources", "no sharp images given")
        self.sources = list(sources)
        self.patch_size, self.config, self.seed = int(patch_size), config, int(seed)
        self.length = int(length) if length is not None else len(self.sources)
        self.flips, self.max_side, self.cache_size = flips, max_side, cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._segments: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.length

    @staticmethod
    def _scale_key(path: str | os.PathLike, max_side: int | None) -> str:
        """Cache key of one photograph at one scale (its decoded pixels and its segments)."""
        return f"{path}@{max_side}"

    def _image(self, path: str | os.PathLike, max_side: int | None) -> np.ndarray:
        """A photograph downscaled to ``max_side``, decoded once (LRU cache)."""
        key = self._scale_key(path, max_side)
        img = self._cache.get(key)
        if img is None:
            img = load_sharp(path, max_side)
            self._cache[key] = img
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return img

    def _image_segments(self, path: str | os.PathLike, max_side: int | None, img: np.ndarray) -> np.ndarray:
        """Felzenszwalb labels of a whole photograph at one scale (``img``, as :meth:`_image` returns it),
        computed once (deterministic, no randomness)."""
        key = self._scale_key(path, max_side)
        seg = self._segments.get(key)
        if seg is None:
            seg = segment_image(img)
            self._segments[key] = seg
            while len(self._segments) > self.cache_size:
                self._segments.popitem(last=False)
        else:
            self._segments.move_to_end(key)
        return seg

    def sample(self, index: int) -> SynthSample:
        """The synthesised sample (numpy, with disparity and CoC maps) for ``index``."""
        rng = self.rng_for(index)
        src = self.sources[int(rng.integers(len(self.sources)))]
        p = self.patch_size
        if isinstance(src, SharpTile):
            path, max_side = src.path, src.max_side
            img = self._image(path, max_side)
            y0, x0, size = src.y, src.x, src.size
        elif isinstance(src, np.ndarray):
            img, y0, x0, size = src, 0, 0, None
        else:
            path, max_side = src, self.max_side
            img, y0, x0, size = self._image(path, max_side), 0, 0, None
        h = size or img.shape[0]
        w = size or img.shape[1]
        if p > h or p > w:
            raise InputError(getattr(src, "path", str(src) if not isinstance(src, np.ndarray) else "array"),
                             f"{w}x{h} is smaller than the {p}px patch")
        y, x = y0 + int(rng.integers(0, h - p + 1)), x0 + int(rng.integers(0, w - p + 1))
        m = self.config.margin
        seg = None
        if self.config.depth == "segments" and not isinstance(src, np.ndarray):
            seg = self._image_segments(path, max_side, img)
        if m:  # context around the patch from the image itself, reflected only past the image border
            ih, iw = img.shape[:2]
            top, left = min(m, y), min(m, x)
            bottom, right = min(m, ih - y - p), min(m, iw - x - p)
            crop = img[y - top:y + p + bottom, x - left:x + p + right]
            seg = seg[y - top:y + p + bottom, x - left:x + p + right] if seg is not None else None
            if (top, left, bottom, right) != (m, m, m, m):
                widths = ((m - top, m - bottom), (m - left, m - right))
                crop = np.pad(crop, widths + ((0, 0),), mode="reflect")
                seg = np.pad(seg, widths, mode="reflect") if seg is not None else None
        else:
            crop = img[y:y + p, x:x + p]
            seg = seg[y:y + p, x:x + p] if seg is not None else None
        if self.flips:
            if seg is not None:
                crop, seg = _random_flips(rng, crop, seg)
            else:
                (crop,) = _random_flips(rng, crop)
        return synthesize(np.ascontiguousarray(crop), rng, self.config, margin=m,
                          segments=None if seg is None else np.ascontiguousarray(seg))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sample(index)
        return _to_tensor(s.blurred), _to_tensor(s.target)
