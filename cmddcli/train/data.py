"""Training data from a :class:`~cmddcli.train.config.DataConfig`, built on :mod:`cmddcli.data`'s datasets.

``data_source(cfg)`` returns a :class:`~cmddcli.train.loop.DataSource`: ``train_dataset(patch, stage)``
gives random ``patch``² crops with random flips, ``val_dataset()`` whole validation images.

- ``manifest``: :class:`~cmddcli.data.PairsDataset` over a prepared manifest (``cmdd prepare``), splits
  ``data.train_split`` / ``data.val_split``;
- ``pairs``: the same over a DPDD / RealDOF tree or any ``source/`` + ``target/`` folder, discovered in
  place (no copy);
- ``synth``: :class:`~cmddcli.data.SynthDataset` synthesising defocus pairs on the fly (new blur at
  every step) from the sharp images under ``data.path``, or from procedural images when the path is
  empty (smoke tests), with the synthesiser preset ``data.synth`` (default v2); validation: a fixed
  set of pairs made with ``data.val_synth`` (e.g. "heldout") from ``data.val_sharp`` or procedural
  images. With ``data.mix > 0`` a share ``mix`` of the samples are crops of the real pairs under
  ``data.real_path`` instead (:class:`~cmddcli.data.real_pairs.MixedDataset`; ``mix = 1``: real only).

Randomness: the loop draws every sample with its own seed (:mod:`cmddcli.train.sampling`); these
datasets take it through their ``rng_for`` hook, so crops, flips and synthetic blur are the same after
``--resume`` and whatever the number of loader workers.

``--data`` strings (:func:`parse_data_arg`): ``synth:DIR``, ``synth``, a manifest JSON or a folder holding
``manifest.json`` (kind ``manifest``), any other folder (kind ``pairs``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from torch.utils.data import Dataset

from ..errors import CmddError, InputError
from .config import DataConfig, TrainConfig

log = logging.getLogger(__name__)

__all__ = ["data_source", "parse_data_arg", "procedural_sharp", "synth_config_for", "ConfigDataSource"]

PROCEDURAL_IMAGES = 16  # sharp sources for `synth` without a folder
VAL_DEFAULT_IMAGES = 8
SYNTH_CACHE_IMAGES = 128  # decoded sharp photographs kept per loader worker (~20 MB each at 1600 px)


def parse_data_arg(text: str) -> Tuple[str, str]:
    """``--data`` -> (kind, path): ``synth[:DIR]``, a manifest (file / folder with manifest.json), a folder."""
    from ..data.manifest import MANIFEST_NAME

    if text == "synth" or text.startswith("synth:"):
        return "synth", text[len("synth:"):] if ":" in text else ""
    p = Path(text)
    if p.is_file() and p.suffix.lower() == ".json":
        return "manifest", text
    if p.is_dir() and (p / MANIFEST_NAME).is_file():
        return "manifest", str(p / MANIFEST_NAME)
    if p.is_dir():
        return "pairs", text
    raise InputError(p, "--data must be a manifest JSON, a folder of pairs, or synth[:DIR_OF_SHARP_IMAGES]")


def procedural_sharp(size: int, rng: np.random.Generator) -> np.ndarray:
    """A sharp synthetic image (size², float32 RGB): random rectangles, discs and stripe patches with hard
    edges plus fine noise, so that blur is visible everywhere. For runs without photographs."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = rng.uniform(0, 1, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(8, 16))):
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        kind = int(rng.integers(0, 3))
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(size / 16, size / 3)
        if kind == 0:
            m = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < rng.uniform(size / 16, size / 3))
        elif kind == 1:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        else:
            theta, period = rng.uniform(0, np.pi), rng.uniform(3, 12)
            m = (np.sin((np.cos(theta) * xx + np.sin(theta) * yy) * 2 * np.pi / period) > 0) & (
                (yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
        img[m] = colour
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def synth_config_for(patch: int, preset: str = "v1"):
    """The synthesiser preset ``preset`` (``SYNTH_PRESETS``) for ``patch``² crops. v1 (the old default)
    caps the largest blur radius at patch/8 (16 px at 128²); the others at patch/6 (their 20 px from
    128² up; smaller for the tiny test patches)."""
    from ..data.synth import synth_preset

    if preset == "v1":
        return synth_preset("v1", max_coc=(1.0, float(max(2.0, min(16.0, patch / 8)))))
    lo, hi = synth_preset(preset).max_coc
    hi = float(max(2.0, min(hi, patch / 6)))
    return synth_preset(preset, max_coc=(min(lo, hi), hi))


# ---------------------------------------------------------------- from a config


def _pairs_manifest(path: str, split: str):
    """An in-memory manifest of the pairs found under `path` (DPDD, RealDOF or source/ + target/)."""
    from ..data.discovery import find_pairs
    from ..data.manifest import Manifest, PairEntry

    items, _ = find_pairs(path, split)
    entries = [PairEntry(name=it.name, split=split, source=str(Path(it.source).resolve()),
                         target=str(Path(it.target).resolve()), width=0, height=0, bit_depth=0,
                         sha256_source="", sha256_target="", subset=it.subset) for it in items]
    return Manifest(dataset="pairs", entries=entries, root=Path(path).resolve())


@dataclass
class ConfigDataSource:
    """The DataSource described by a DataConfig (see the module docstring)."""

    data: DataConfig
    seed: int = 0
    _tiles: dict = field(default_factory=dict, init=False, repr=False)  # (paths, size) -> sharp tiles

    def _sharp_tiles(self, sources: list, size: int) -> list:
        """Sharp ``size``² tiles of the photographs at each of ``data.sharp_scales`` (found once per data
        source: it decodes them all)."""
        from ..data.sources import find_sharp_tiles

        scales = tuple(self.data.sharp_scales)
        key = (tuple(str(p) for p in sources), size, scales)
        if key not in self._tiles:
            tiles = []
            for max_side in scales:
                found = find_sharp_tiles(sources, tile=size, max_side=max_side)
                if len(scales) > 1:
                    log.info("sharp %dpx tiles at %d px: %d", size, max_side, len(found))
                tiles += found
            used = len({t.path for t in tiles})
            log.info("sharp %dpx tiles: %d from %d of %d photographs", size, len(tiles), used, len(sources))
            if not tiles:
                raise InputError(self.data.path, f"no photograph has a sharp {size}px tile")
            self._tiles[key] = tiles
        return self._tiles[key]

    def _manifest(self, path: str, split: str):
        from ..data.manifest import load_manifest

        if self.data.kind == "manifest":
            return load_manifest(path)
        return _pairs_manifest(path, split)

    def _procedural(self, size: int, count: int, seed: int) -> List[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [procedural_sharp(size, rng) for _ in range(count)]

    def train_dataset(self, patch: int, stage: int) -> Dataset:
        from ..data.datasets import PairsDataset

        d = self.data
        if d.kind == "synth":
            return self._mixed_dataset(patch) if d.mix > 0 else self._synth_dataset(patch)
        self.check()
        return PairsDataset(self._manifest(d.path, d.train_split), d.train_split, patch_size=patch, flips=d.flips,
                            seed=self.seed)

    def _synth_dataset(self, patch: int) -> Dataset:
        """Defocus pairs synthesised on the fly from ``data.path`` (or procedural images)."""
        from ..data.datasets import SynthDataset

        d = self.data
        if d.path:
            from ..data.sources import list_images

            sources = list_images(d.path)
            if d.val_sharp:  # keep the validation photographs out of training
                held = Path(d.val_sharp).resolve()
                sources = [p for p in sources if not Path(p).resolve().is_relative_to(held)]
            if not sources:
                raise InputError(d.path, "no sharp images to synthesise from")
            if d.sharp_tiles:
                sources = self._sharp_tiles(sources, d.sharp_tiles)
        else:
            sources = self._procedural(max(256, patch), PROCEDURAL_IMAGES, self.seed)
        # every sample picks a random photograph: keep them all decoded (a 1600 px photo is ~20 MB
        # as float32 and takes up to a second to decode; a 16-image cache missed 2 times in 3)
        return SynthDataset(sources, patch_size=patch, config=synth_config_for(patch, d.synth), seed=self.seed,
                            flips=d.flips, cache_size=SYNTH_CACHE_IMAGES)

    def _mixed_dataset(self, patch: int) -> Dataset:
        """Real crops from ``data.real_path`` (share ``data.mix``) mixed with synthetic pairs."""
        from ..data.real_pairs import MixedDataset, RealCropDataset, real_pairs_from

        d = self.data
        pairs = real_pairs_from(d.real_path)
        real = RealCropDataset(pairs, patch_size=patch, seed=self.seed, flips=d.flips, aspect=d.real_aspect,
                               blur_bias=d.real_blur_bias, register=d.real_register)
        log.info("real pairs: %d from %s (%s, registration %s, %.0f %% of the samples)", len(pairs), d.real_path,
                 d.real_aspect, d.real_register, 100 * d.mix)
        if d.mix >= 1.0:
            return real
        return MixedDataset(real, self._synth_dataset(patch), d.mix, seed=self.seed)

    def check(self) -> None:
        """Raise CmddError now for a config that cannot give training data (a manifest or pairs run
        without data.path), before a run logs its start."""
        if self.data.kind != "synth" and not self.data.path:
            raise CmddError(f"data.kind = {self.data.kind!r} needs data.path (or --data)")
        if self.data.mix > 0 and not self.data.real_path:
            raise CmddError("data.mix > 0 needs data.real_path (a folder of real blurred / sharp pairs)")

    def val_dataset(self) -> Optional[Dataset]:
        """The validation set, built once per run (so a "validation disabled" warning is given once)."""
        return self._val_set

    @functools.cached_property
    def _val_set(self) -> Optional[Dataset]:
        from ..data.datasets import PairsDataset, SynthDataset

        d = self.data
        if d.kind == "synth" and not d.val_path:
            size = d.val_crop or 128
            n = d.val_images or VAL_DEFAULT_IMAGES
            if d.val_sharp:
                from ..data.sources import list_images

                sources = list_images(d.val_sharp)
                if not sources:
                    raise InputError(d.val_sharp, "no sharp images for the synthetic validation")
            else:
                sources = self._procedural(size, n, 10_000 + self.seed)  # disjoint from the training images
            return SynthDataset(sources, patch_size=size, config=synth_config_for(size, d.val_synth or d.synth),
                                seed=10_000 + self.seed, length=n, flips=False)
        path = d.val_path or d.path
        if not path:
            return None
        kind = "manifest" if d.val_path and Path(d.val_path).suffix.lower() == ".json" else d.kind
        try:
            if kind == "manifest":
                from ..data.manifest import load_manifest

                man = load_manifest(path)
            else:
                man = _pairs_manifest(path, d.val_split)
            return PairsDataset(man, d.val_split, patch_size=None, flips=False)
        except (CmddError, InputError) as e:
            log.warning("validation disabled: %s", e)
            return None


def data_source(cfg: TrainConfig) -> ConfigDataSource:
    """The :class:`~cmddcli.train.loop.DataSource` that ``cfg.data`` describes (manifest, pairs or synthesis).
    Raises CmddError if it names no data."""
    source = ConfigDataSource(cfg.data, cfg.seed)
    source.check()
    return source
