"""Finding blurred/sharp pairs on disk: DPDD (as distributed and Restormer's renamed layout),
RealDOF, and any ``source/`` + ``target/`` folder.

Discovery only lists and checks (names, presence, sizes from the PNG header); it decodes nothing.
Every problem found is collected, and :func:`raise_problems` turns them into one
:class:`~cmddcli.errors.InputError` that names the first few.
"""

from __future__ import annotations

import glob as _glob
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .manifest import SPLITS
from ..photo.arrays import DATASET_EXTENSIONS, image_size

# SPEC §3: 0-based indices into the naturally sorted DPDD test list that are indoor scenes.
log = logging.getLogger(__name__)

DPDD_INDOOR_TEST = frozenset([*range(8, 14), 16, 32, *range(39, 57), *range(59, 68), 74, 75])
DPDD_COUNTS = {"train": 350, "val": 74, "test": 76}
REALDOF_COUNT = 50

_SOURCE_NAMES = ("source", "input", "inputC", "blur", "blurred")
_TARGET_NAMES = ("target", "gt", "sharp", "groundtruth")


def natural_key(name: str) -> list:
    """Sort key that orders "img2" before "img10"."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class RawPair:
    """A blurred/sharp pair found on disk (full images)."""

    name: str  # file stem, shared by source and target
    split: str
    source: Path
    target: Path
    extra: dict[str, Path] = field(default_factory=dict)  # e.g. dual-pixel "left"/"right" views
    subset: str | None = None


@dataclass
class Discovery:
    dataset: str
    layout: str
    base: Path
    pairs: dict[str, list[RawPair]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def all_pairs(self) -> list[RawPair]:
        return [p for s in self.pairs for p in self.pairs[s]]


def raise_problems(disc: Discovery, limit: int = 8) -> None:
    """Raise one InputError listing the first ``limit`` problems, if there are any."""
    if not disc.problems:
        return
    shown = "; ".join(disc.problems[:limit])
    more = f" (and {len(disc.problems) - limit} more)" if len(disc.problems) > limit else ""
    raise InputError(disc.base, f"{len(disc.problems)} problem(s) in the {disc.dataset} data: {shown}{more}")


def _images(folder: Path) -> dict[str, Path]:
    """stem -> path of the image files directly in ``folder`` (hidden files ignored)."""
    out: dict[str, Path] = {}
    for p in folder.iterdir():
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in DATASET_EXTENSIONS:
            out[p.stem] = p
    return out


def _size_problems(source: Path, others: dict[str, Path]) -> list[str]:
    """One line for each of ``others`` (label -> path) whose image size differs from ``source``'s, or
    the error that stopped reading a size."""
    problems = []
    try:
        size = image_size(source)
        for label, p in others.items():
            other = image_size(p)
            if other != size:
                problems.append(f"{p}: {label} is {other[0]}x{other[1]} but the source is {size[0]}x{size[1]}")
    except InputError as e:
        problems.append(str(e))
    return problems


def match_folder_pair(split: str, src_dir: Path, tgt_dir: Path, extra_dirs: dict[str, Path] | None = None,
                      check_sizes: bool = True) -> tuple[list[RawPair], list[str]]:
    """Match the images of ``src_dir`` and ``tgt_dir`` by file stem; returns (pairs, problems)."""
    problems: list[str] = []
    src, tgt = _images(src_dir), _images(tgt_dir)
    extras = {k: _images(d) for k, d in (extra_dirs or {}).items()}
    for stem in sorted(set(src) - set(tgt), key=natural_key):
        problems.append(f"{src[stem]}: no matching target in {tgt_dir}")
    for stem in sorted(set(tgt) - set(src), key=natural_key):
        problems.append(f"{tgt[stem]}: no matching source in {src_dir}")
    pairs = []
    for stem in sorted(set(src) & set(tgt), key=natural_key):
        extra = {}
        for k, files in extras.items():
            if stem in files:
                extra[k] = files[stem]
            else:
                problems.append(f"{src[stem]}: no matching {k} view in {extra_dirs[k]}")
        if check_sizes:
            problems += _size_problems(src[stem], {"target": tgt[stem], **extra})
        pairs.append(RawPair(name=stem, split=split, source=src[stem], target=tgt[stem], extra=extra))
    if not src and not tgt:
        problems.append(f"{src_dir}: no images")
    return pairs, problems


def _first_dir(base: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (base / n).is_dir():
            return base / n
    return None


# --------------------------------------------------------------------------------------------------
# DPDD


def _dpdd_canon_base(root: Path) -> Path | None:
    cands = [root, root / "dd_dp_dataset_canon", root / "dd_dp_dataset_png"]
    if root.is_dir():
        cands += sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("dd_dp_dataset"))
    for c in cands:
        if any((c / f"{s}_c" / "source").is_dir() for s in SPLITS):
            return c
    return None


def _dpdd_restormer_dirs(root: Path, split: str) -> Path | None:
    for base in (root, root / "Datasets", root / "Downloads", root / "Datasets" / "Downloads"):
        for d in (base / split / "DPDD", base / "DPDD" / split, base / split):
            if (d / "inputC").is_dir():
                return d
    return None


def discover_dpdd(root: str | Path, splits: tuple[str, ...] = SPLITS, check_sizes: bool = True) -> Discovery:
    """Find DPDD under ``root`` (``dd_dp_dataset_canon``, its parent, or Restormer's ``Datasets``).

    Layouts accepted:
      - as distributed: ``{split}_c/{source,target}``, dual-pixel views ``{split}_l/source``,
        ``{split}_r/source``;
      - Restormer: ``{split}/DPDD/{inputC,inputL,inputR,target}`` (also ``DPDD/{split}/...`` and
        ``Downloads/DPDD/{split}/...``).
    The test split gets SPEC §3's indoor/outdoor subset when it has the expected 76 scenes.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder")
    canon = _dpdd_canon_base(root)
    disc = Discovery(dataset="dpdd", layout="canon" if canon else "restormer", base=(canon or root).resolve())
    for split in splits:
        if split not in SPLITS:
            raise InputError(root, f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
        if canon is not None:
            src, tgt = canon / f"{split}_c" / "source", canon / f"{split}_c" / "target"
            extra = {k: canon / f"{split}_{c}" / "source" for k, c in (("left", "l"), ("right", "r"))}
            looked = f"{split}_c/source"
        else:
            d = _dpdd_restormer_dirs(root, split) or root / split / "DPDD"
            src, tgt = d / "inputC", d / "target"
            extra = {"left": d / "inputL", "right": d / "inputR"}
            looked = f"{split}/DPDD/inputC"
        if not src.is_dir():
            disc.problems.append(
                f"split '{split}' not found (looked for {looked} and dd_dp_dataset_canon/{split}_c/source); "
                f"pass --splits with the splits you have")
            continue
        if not tgt.is_dir():
            disc.problems.append(f"{tgt}: target folder missing for split '{split}'")
            continue
        extra = {k: v for k, v in extra.items() if v.is_dir()}  # dual-pixel views when present
        pairs, problems = match_folder_pair(split, src, tgt, extra, check_sizes)
        disc.problems += problems
        expected = DPDD_COUNTS[split]
        if len(pairs) != expected:
            disc.notes.append(f"{split}: {len(pairs)} pairs (DPDD has {expected})")
        if split == "test":
            if len(pairs) == expected:
                pairs = [RawPair(p.name, p.split, p.source, p.target, p.extra,
                                 "indoor" if i in DPDD_INDOOR_TEST else "outdoor") for i, p in enumerate(pairs)]
            else:
                disc.notes.append("test: indoor/outdoor subsets need the full 76-image test list; left unset")
        disc.pairs[split] = pairs
    return disc


# --------------------------------------------------------------------------------------------------
# RealDOF and generic pairs


def discover_realdof(root: str | Path, check_sizes: bool = True) -> Discovery:
    """Find RealDOF: ``RealDOF/{source,target}`` (``root`` may be RealDOF or its parent, or
    Restormer's ``Datasets`` with ``test/RealDOF/{inputC,target}``). All pairs go to split "test"."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder")
    for base in (root, root / "RealDOF", root / "test" / "RealDOF", root / "Datasets" / "test" / "RealDOF"):
        src, tgt = _first_dir(base, _SOURCE_NAMES), _first_dir(base, _TARGET_NAMES)
        if src is not None:
            break
    disc = Discovery(dataset="realdof", layout="realdof", base=base.resolve())
    if src is None:
        disc.problems.append("no RealDOF source folder (looked for RealDOF/source and test/RealDOF/inputC)")
        return disc
    if tgt is None:
        disc.problems.append(f"{base}: target folder missing")
        return disc
    pairs, disc.problems = match_folder_pair("test", src, tgt, None, check_sizes)
    if len(pairs) != REALDOF_COUNT:
        disc.notes.append(f"test: {len(pairs)} pairs (RealDOF has {REALDOF_COUNT})")
    disc.pairs["test"] = pairs
    return disc


def _suffix_pairs(root: Path) -> tuple[dict[str, Path], dict[str, Path], list[str]]:
    """Sources and targets named ``NAME_input`` / ``NAME_gt`` (or ``_blur`` / ``_sharp``,
    ``_source`` / ``_target``; suffixes in any case) side by side in one folder, as name -> path
    (empty when there are none), and the problems: two sources or two targets for one name."""
    src: dict[str, Path] = {}
    tgt: dict[str, Path] = {}
    problems: list[str] = []
    for stem, path in sorted(_images(root).items()):
        for names, out, what in ((_SOURCE_NAMES, src, "source"), (_TARGET_NAMES, tgt, "target")):
            n = next((n for n in names if stem.lower().endswith("_" + n.lower()) and len(stem) > len(n) + 1), None)
            if n is None:
                continue
            name = stem[: -len(n) - 1]
            if name in out:
                problems.append(f"{path}: a second {what} for {name!r} (the first is {out[name].name})")
            else:
                out[name] = path
    return src, tgt, problems


def discover_pairs(root: str | Path, split: str = "test", check_sizes: bool = True) -> Discovery:
    """Any folder with ``source/`` and ``target/`` (also input/gt, blur/sharp), matched by file stem,
    or one folder of ``NAME_input`` + ``NAME_gt`` files (also ``_blur``/``_sharp``,
    ``_source``/``_target``; e.g. the DPDD GIF samples). If ``root`` instead holds ``train/``,
    ``val/``, ``test/`` folders each with such a pair of folders, every split found is listed
    (``split`` is then ignored)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder")
    disc = Discovery(dataset="pairs", layout="pairs", base=root.resolve())
    layout = {split: root} if _first_dir(root, _SOURCE_NAMES) else {
        s: root / s for s in SPLITS if (root / s).is_dir() and _first_dir(root / s, _SOURCE_NAMES)}
    if not layout:
        src, tgt, problems = _suffix_pairs(root)
        if src or tgt:
            disc.problems += problems
            for name in sorted(set(src) - set(tgt), key=natural_key):
                disc.problems.append(f"{src[name]}: no matching target (e.g. {name}_gt) in {root}")
            for name in sorted(set(tgt) - set(src), key=natural_key):
                disc.problems.append(f"{tgt[name]}: no matching source (e.g. {name}_input) in {root}")
            disc.pairs[split] = [RawPair(name=n, split=split, source=src[n], target=tgt[n], extra={})
                                 for n in sorted(set(src) & set(tgt), key=natural_key)]
            for q in disc.pairs[split] if check_sizes else []:
                disc.problems += _size_problems(q.source, {"target": q.target})
            return disc
        disc.problems.append(f"no source/ and target/ folders, NAME_input + NAME_gt files, nor "
                             f"train|val|test/source under {root}")
    for s, base in layout.items():
        src, tgt = _first_dir(base, _SOURCE_NAMES), _first_dir(base, _TARGET_NAMES)
        if tgt is None:
            disc.problems.append(f"{base}: target/ folder missing next to {src.name}/")
            continue
        pairs, problems = match_folder_pair(s, src, tgt, None, check_sizes)
        disc.problems += problems
        disc.pairs[s] = pairs
    return disc


# ---------------------------------------------------------------- any data argument


def _is_dpdd(root: Path) -> bool:
    names = {p.name for p in root.iterdir()} if root.is_dir() else set()
    if any(n.startswith("dd_dp_dataset") for n in names) or any(n.endswith("_c") for n in names):
        return True
    for base in (root, root / "Datasets", root / "Downloads", root / "Datasets" / "Downloads"):
        for d in (base / "test" / "DPDD", base / "DPDD" / "test", base / "test"):
            if (d / "inputC").is_dir():
                return True
    return False


def find_pairs(path: str | Path, split: str = "test") -> tuple[list, str]:
    """The ``split`` pairs under ``path`` -- a manifest (or a folder holding ``manifest.json``), a DPDD
    tree (either layout), a RealDOF tree or any ``source/`` + ``target/`` folder -- in natural name
    order, and the data set's name. Each pair has ``name``, ``source``, ``target`` (paths) and
    ``subset`` (``indoor`` / ``outdoor`` in the DPDD test split). Raises InputError when nothing fits."""
    from .manifest import MANIFEST_NAME, load_manifest

    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_file() or (p / MANIFEST_NAME).is_file():
        man = load_manifest(p)
        splits = man.splits()
        use = split if split in splits else (splits[0] if len(splits) == 1 else None)
        if use is None:
            raise InputError(p, f"manifest has no split {split!r} (it has {', '.join(splits) or 'none'})")
        return sorted(man.pairs(use), key=lambda q: natural_key(q.name)), man.dataset or p.stem
    if _is_dpdd(p):
        disc = discover_dpdd(p, splits=(split,), check_sizes=False)
    elif "realdof" in str(p).lower():
        disc = discover_realdof(p, check_sizes=False)
    else:
        disc = discover_pairs(p, split=split, check_sizes=False)
        if disc.problems and not disc.pairs:
            alt = discover_realdof(p, check_sizes=False)
            disc = alt if not alt.problems else disc
    raise_problems(disc)
    for note in disc.notes:
        log.info("%s", note)
    pairs = disc.pairs.get(split) or (disc.all_pairs() if len(disc.pairs) == 1 else [])
    if not pairs:
        raise InputError(p, f"no {split} pairs found")
    return pairs, disc.dataset


def keyed_images(spec: str | Path, suffix: str = "") -> tuple[dict[str, Path], str]:
    """key -> path for a folder (key = stem), a single file, or a glob (key = what '*' matched).

    `suffix` is removed from the end of each key (and, for folders, only stems ending with it count).
    Returns the mapping and a short label for the set.
    """
    s = str(spec)
    if any(c in s for c in "*?[") and not Path(s).exists():  # an existing x[1].png is a file, not a pattern
        if s.count("*") != 1 or "?" in s or "[" in s:
            raise InputError(s, "a pattern may contain exactly one '*' (it becomes the matching key)")
        head, tail = s.split("*")
        out = {}
        for f in sorted(_glob.glob(s)):
            if Path(f).suffix.lower() in DATASET_EXTENSIONS and Path(f).is_file():
                key = f[len(head) : len(f) - len(tail) if tail else None]
                out[_strip(key, suffix)] = Path(f)
        if not out:
            raise InputError(s, "the pattern matches no image")
        return out, _label(s)
    p = Path(s)
    if p.is_file():
        return {_strip(p.stem, suffix): p}, _label(s)
    if not p.is_dir():
        raise InputError(p, "no such file or folder")
    out = {}
    for f in p.iterdir():
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in DATASET_EXTENSIONS:
            if suffix and not f.stem.endswith(suffix):
                continue
            key = _strip(f.stem, suffix)
            if key in out:
                raise InputError(f, f"two images share the stem {key!r} ({out[key].name})")
            out[key] = f
    if not out:
        raise InputError(p, "no images")
    return out, _label(s)


def _label(spec: str) -> str:
    """A short name for a set: its last two path components (``dpdd_1024/blur``)."""
    parts = Path(spec).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else str(spec)


def _strip(key: str, suffix: str) -> str:
    return key[: -len(suffix)] if suffix and key.endswith(suffix) else key
