"""Manifests: the one file that `cmdd prepare` writes and `cmdd train` / `cmdd eval` read.

A manifest is JSON next to (or above) the images it lists. Paths inside are relative to the folder
holding the manifest (absolute only when no relative path exists, e.g. another Windows drive), so a
prepared folder can be moved as a whole. Layout::

    {
      "format": "cmdd-manifest", "version": 1,
      "dataset": "dpdd",                 # dpdd | realdof | pairs | synth
      "created": "2025-01-01T12:00:00Z",
      "source_root": "/abs/path/that/was/prepared",
      "params": {...},                   # the options used (window, stride, flips, ...)
      "pairs": [
        {"name": "1P0A1234_y0000_x0204_h", "split": "train", "subset": null,
         "source": "train/source/1P0A1234_y0000_x0204_h.png", "target": "train/target/...png",
         "width": 512, "height": 512, "bit_depth": 16,
         "sha256_source": "...", "sha256_target": "...",
         "origin": "1P0A1234", "window": [0, 204, 512, 512], "flip": "h",
         "extra": {"left": "...", "right": "..."}}      # optional: dual-pixel views, depth maps
      ]
    }

``subset`` is "indoor"/"outdoor" for the DPDD test split (SPEC §3), else null. ``window`` is
[y, x, height, width] in the original image, ``flip`` one of null, "h", "v".
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ..atomic import atomic_write_bytes
from ..fileutil import sha256_file

MANIFEST_FORMAT = "cmdd-manifest"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PairEntry:
    """One blurred/sharp pair as stored (paths relative to the manifest folder)."""

    name: str
    split: str
    source: str
    target: str
    width: int
    height: int
    bit_depth: int
    sha256_source: str
    sha256_target: str
    subset: str | None = None
    origin: str | None = None
    window: tuple[int, int, int, int] | None = None
    flip: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = list(self.window) if self.window is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "PairEntry":
        d = dict(d)
        if d.get("window") is not None:
            d["window"] = tuple(int(v) for v in d["window"])
        d["extra"] = dict(d.get("extra") or {})
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Pair:
    """A pair with absolute paths, as train/eval use it."""

    name: str
    split: str
    source: Path
    target: Path
    width: int
    height: int
    bit_depth: int
    subset: str | None = None
    sha256_source: str = ""
    sha256_target: str = ""
    extra: dict[str, Path] = field(default_factory=dict)


@dataclass
class Manifest:
    dataset: str
    entries: list[PairEntry]
    root: Path  # the folder holding the manifest; entry paths are relative to it
    params: dict[str, Any] = field(default_factory=dict)
    source_root: str = ""
    created: str = ""
    version: int = MANIFEST_VERSION

    # ---- queries
    def pairs(self, split: str | None = None, subset: str | None = None) -> list[Pair]:
        """Pairs with absolute paths, optionally only one split and/or subset (indoor/outdoor)."""
        return [self._resolve(e) for e in self.entries
                if (split is None or e.split == split) and (subset is None or e.subset == subset)]

    def splits(self) -> list[str]:
        seen = {e.split for e in self.entries}
        return [s for s in SPLITS if s in seen] + sorted(seen - set(SPLITS))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.split] = out.get(e.split, 0) + 1
        return out

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs())

    def resolve(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else (self.root / p)

    def _resolve(self, e: PairEntry) -> Pair:
        return Pair(name=e.name, split=e.split, source=self.resolve(e.source), target=self.resolve(e.target),
                    width=e.width, height=e.height, bit_depth=e.bit_depth, subset=e.subset,
                    sha256_source=e.sha256_source, sha256_target=e.sha256_target,
                    extra={k: self.resolve(v) for k, v in e.extra.items()})

    def verify(self, split: str | None = None) -> list[str]:
        """Re-hash the listed files; returns a list of problems (empty when all match)."""
        problems = []
        for e in self.entries:
            if split is not None and e.split != split:
                continue
            for rel, digest in ((e.source, e.sha256_source), (e.target, e.sha256_target)):
                p = self.resolve(rel)
                if not p.is_file():
                    problems.append(f"{p}: missing")
                elif digest and sha256_file(p) != digest:
                    problems.append(f"{p}: checksum differs from the manifest")
        return problems

    # ---- (de)serialisation
    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": self.version,
            "dataset": self.dataset,
            "created": self.created or utc_now(),
            "source_root": self.source_root,
            "params": self.params,
            "counts": self.counts(),
            "pairs": [e.to_json() for e in self.entries],
        }


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def relpath(path: str | os.PathLike, start: str | os.PathLike) -> str:
    """POSIX-style path of ``path`` relative to ``start`` (absolute if impossible)."""
    try:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(start))).as_posix()
    except ValueError:  # different drives on Windows
        return Path(os.path.abspath(path)).as_posix()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_manifest(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Write atomically. ``manifest.root`` must be the folder of ``path`` (paths are relative to it)."""
    path = Path(path)
    if path.parent.resolve() != Path(manifest.root).resolve():
        raise ValueError(f"manifest root {manifest.root} is not the folder of {path}")
    atomic_write_bytes(path, (json.dumps(manifest.to_json(), indent=1) + "\n").encode(), fsync=False)
    return path


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest (a file, or a folder holding ``manifest.json``). Raises :class:`InputError`."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise InputError(path, "manifest not found (run `cmdd prepare ...` first)")
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"not a readable JSON manifest ({e})") from e
    if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
        raise InputError(path, f"not a cmdd manifest (missing \"format\": \"{MANIFEST_FORMAT}\")")
    if int(d.get("version", 0)) > MANIFEST_VERSION:
        raise InputError(path, f"manifest version {d.get('version')} is newer than this cmdd understands "
                               f"({MANIFEST_VERSION})")
    try:
        entries = [PairEntry.from_json(e) for e in d.get("pairs", [])]
    except (TypeError, ValueError) as e:
        raise InputError(path, f"malformed pair entry ({e})") from e
    return Manifest(dataset=str(d.get("dataset", "")), entries=entries, root=path.parent.resolve(),
                    params=dict(d.get("params") or {}), source_root=str(d.get("source_root", "")),
                    created=str(d.get("created", "")), version=int(d.get("version", MANIFEST_VERSION)))
