"""The published DPDD / RealDOF evaluation protocol (SPEC §3), for a model or for saved predictions.

Protocol (defaults):
- images are read and, with ``bits=8`` (the published single-image numbers), reduced to 8 bit the way
  ``cv2.imread`` reads a 16-bit PNG (libpng ``png_set_strip_16``: the high byte, ``v >> 8``); with
  ``bits=16`` they are used at their stored depth (8-bit files stay 8-bit);
- the network sees the whole image (no tiling unless ``tile`` is set) in fp32;
- the output is clamped to [0, 1] and **not** quantised (saved images, if asked for, are);
- PSNR / SSIM / MAE from :mod:`cmddcli.metrics` per image (scikit-image conventions), then averaged
  per image over the indoor / outdoor / combined subsets of the DPDD test split; an image identical to
  its target has an infinite PSNR: it is counted in ``identical``, left out of the PSNR mean (which
  is null when every image is identical), and written as null in JSON (``inf`` in the CSV), so
  the JSON is strict RFC 8259 and one perfect image does not turn the mean into inf;
- ``crop_top`` drops the top rows of prediction and target before scoring (e.g. 48 for the GIF pairs
  with a burned-in label), ``mask`` restricts scoring to a region (non-zero pixels of a mask image).

Inputs: a DPDD tree (either layout), a RealDOF tree, a manifest JSON (or a folder holding
``manifest.json``), or any ``source/`` + ``target/`` folder for the model; for saved predictions, a
folder / file / glob of predictions matched by stem to a folder / file / glob of targets (a glob is
keyed by the text its ``*`` matched), or to the targets of a dataset.
"""

from __future__ import annotations

import csv
import dataclasses
import glob as _glob
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from . import metrics as M
from .data.dpdd import (
    discover_dpdd,
    discover_pairs,
    discover_realdof,
    natural_key,
    raise_problems,
)
from .data.manifest import MANIFEST_NAME, load_manifest
from .data.pngio import IMAGE_SUFFIXES, from_float, read_image, write_atomic, write_png
from .errors import CmddError, InputError

log = logging.getLogger(__name__)

__all__ = [
    "EvalItem",
    "EvalSettings",
    "EvalRow",
    "SummaryRow",
    "EvalReport",
    "load_for_eval",
    "items_from_data",
    "items_from_predictions",
    "items_with_predictions",
    "evaluate_predictions",
    "evaluate_model",
    "summarise",
]

Progress = Callable[[int, int, str], None]  # (done, total, current name)


# ---------------------------------------------------------------- what is scored


@dataclass(frozen=True)
class EvalItem:
    """One image to score. `source` is the network input (model mode), `pred` a saved prediction."""

    name: str
    target: Path
    source: Optional[Path] = None
    pred: Optional[Path] = None
    subset: Optional[str] = None  # "indoor" / "outdoor" for the DPDD test split
    group: str = "all"  # the data set it came from (one table section per group)
    crop_top: int = 0


@dataclass(frozen=True)
class EvalSettings:
    """How to score. See the module docstring for the protocol these defaults implement."""

    metrics: tuple = ("psnr", "ssim", "mae")
    bits: int = 8
    ssim_window: str = "uniform"
    mask: Optional[str] = None
    tile: int = 0  # 0 = whole image (the protocol)
    precision: str = "fp32"
    device: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "metrics", tuple(M.parse_metric_names(self.metrics)))
        if self.bits not in (8, 16):
            raise CmddError(f"bits must be 8 or 16, got {self.bits}")
        if self.ssim_window not in M.SSIM_WINDOWS:
            raise CmddError(f"ssim window must be one of {', '.join(M.SSIM_WINDOWS)}, got {self.ssim_window!r}")
        if self.tile < 0:
            raise CmddError(f"tile must be >= 0 (0 = whole image), got {self.tile}")

    def describe(self) -> dict:
        d = dataclasses.asdict(self)
        d["metrics"] = list(self.metrics)
        d["ssim"] = (
            "skimage structural_similarity(data_range=1, channel_axis=-1): uniform 7x7, sample covariance"
            if self.ssim_window == "uniform"
            else "skimage structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)"
        )
        d["loading"] = (
            "8-bit (16-bit files: high byte, as cv2.imread)" if self.bits == 8 else "stored bit depth"
        )
        d["output"] = "clamped to [0, 1], not quantised"
        return d


@dataclass
class EvalRow:
    name: str
    group: str
    subset: Optional[str]
    height: int
    width: int
    scores: Dict[str, float]
    seconds: float = 0.0  # model time (0 when scoring saved predictions)


@dataclass
class SummaryRow:
    group: str
    subset: str  # "indoor" / "outdoor" / "combined"
    count: int
    means: Dict[str, Optional[float]]  # None: no finite value (PSNR when every image is identical)
    identical: int = 0  # images equal to their target (infinite PSNR), left out of the PSNR mean


@dataclass
class EvalReport:
    settings: dict
    rows: List[EvalRow]
    summary: List[SummaryRow]
    metrics: tuple
    extra: dict = field(default_factory=dict)

    def overall(self) -> SummaryRow:
        """The row over every image scored."""
        return self.summary[-1]

    def to_json(self) -> dict:
        """JSON-ready dict; non-finite numbers (an identical pair's PSNR) become None (null)."""
        return finite_json({
            "settings": self.settings,
            **self.extra,
            "metrics": list(self.metrics),
            "summary": [dataclasses.asdict(s) for s in self.summary],
            "images": [dataclasses.asdict(r) for r in self.rows],
        })

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["name", "group", "subset", "height", "width", *self.metrics, "seconds"])
        for r in self.rows:
            w.writerow([r.name, r.group, r.subset or "", r.height, r.width,
                        *(_fmt(r.scores[m]) for m in self.metrics), f"{r.seconds:.4f}"])
        return buf.getvalue()

    def write(self, out_dir: str | Path) -> Dict[str, Path]:
        """Write ``per_image.csv`` and ``summary.json`` atomically into `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "per_image.csv", "json": out / "summary.json"}
        write_atomic(paths["csv"], self.csv_text().encode())
        text = json.dumps(self.to_json(), indent=2, default=_json_default, allow_nan=False)
        write_atomic(paths["json"], (text + "\n").encode())
        return paths


def _fmt(v: float) -> str:
    return repr(float(v))


def finite_json(o):
    """``o`` with every non-finite float (inf, nan) replaced by None, recursively: strict JSON."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite_json(v) for v in o]
    return o


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return str(o)


# ---------------------------------------------------------------- loading


def load_for_eval(path: str | Path, bits: int = 8) -> np.ndarray:
    """Read an image as float64 HxWx3 in [0, 1] under the protocol's bit depth.

    bits=8: 8-bit files as they are, 16-bit files reduced to their high byte (``cv2.imread``'s
    ``png_set_strip_16``); bits=16: the stored depth (uint16 / 65535, uint8 / 255).
    """
    a = read_image(path)  # HxWx3 uint8 / uint16
    if a.dtype == np.uint16:
        if bits == 8:
            return (a >> 8).astype(np.float64) / 255.0
        return a.astype(np.float64) / 65535.0
    return a.astype(np.float64) / 255.0


def _load_mask(path: Optional[str]) -> Optional[np.ndarray]:
    if not path:
        return None
    a = read_image(path, channels=0)
    if a.ndim == 3:
        a = a[..., :3].max(axis=2) if a.shape[2] >= 3 else a[..., 0]
    return a > 0


# ---------------------------------------------------------------- finding items


def _is_dpdd(root: Path) -> bool:
    names = {p.name for p in root.iterdir()} if root.is_dir() else set()
    if any(n.startswith("dd_dp_dataset") for n in names) or any(n.endswith("_c") for n in names):
        return True
    for base in (root, root / "Datasets", root / "Downloads", root / "Datasets" / "Downloads"):
        for d in (base / "test" / "DPDD", base / "DPDD" / "test", base / "test"):
            if (d / "inputC").is_dir():
                return True
    return False


def items_from_data(path: str | Path, split: str = "test", group: Optional[str] = None,
                    crop_top: int = 0) -> List[EvalItem]:
    """Model-mode items (source + target) from a manifest, a DPDD / RealDOF tree or a pairs folder."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_file() or (p / MANIFEST_NAME).is_file():
        man = load_manifest(p)
        splits = man.splits()
        use = split if split in splits else (splits[0] if len(splits) == 1 else None)
        if use is None:
            raise InputError(p, f"manifest has no split {split!r} (it has {', '.join(splits) or 'none'})")
        pairs = sorted(man.pairs(use), key=lambda q: natural_key(q.name))
        label = group or (man.dataset or p.stem)
        return [EvalItem(q.name, q.target, source=q.source, subset=q.subset, group=label, crop_top=crop_top)
                for q in pairs]
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
    label = group or disc.dataset
    return [EvalItem(q.name, q.target, source=q.source, subset=q.subset, group=label, crop_top=crop_top)
            for q in pairs]


def _keyed_images(spec: str | Path, suffix: str = "") -> tuple[Dict[str, Path], str]:
    """key -> path for a folder (key = stem), a single file, or a glob (key = what '*' matched).

    `suffix` is removed from the end of each key (and, for folders, only stems ending with it count).
    Returns the mapping and a short label for the set.
    """
    s = str(spec)
    if any(c in s for c in "*?["):
        if s.count("*") != 1 or "?" in s or "[" in s:
            raise InputError(s, "a pattern may contain exactly one '*' (it becomes the matching key)")
        head, tail = s.split("*")
        out = {}
        for f in sorted(_glob.glob(s)):
            if Path(f).suffix.lower() in IMAGE_SUFFIXES and Path(f).is_file():
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
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES:
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


def items_from_predictions(pred: str | Path, target: str | Path, pred_suffix: str = "",
                           crop_top: int = 0, group: Optional[str] = None) -> List[EvalItem]:
    """Saved predictions matched to targets by key (see :func:`_keyed_images`). Unmatched files on
    either side are an error naming them. Two single files are paired whatever their names."""
    preds, plabel = _keyed_images(pred, pred_suffix)
    targets, _ = _keyed_images(target)
    if len(preds) == len(targets) == 1 and Path(pred).is_file() and Path(target).is_file():
        targets = {next(iter(preds)): next(iter(targets.values()))}
    missing_t = sorted(set(preds) - set(targets), key=natural_key)
    missing_p = sorted(set(targets) - set(preds), key=natural_key)
    if missing_t or missing_p:
        parts = []
        if missing_t:
            parts.append(f"no target for {', '.join(missing_t[:5])}{' ...' if len(missing_t) > 5 else ''}")
        if missing_p:
            parts.append(f"no prediction for {', '.join(missing_p[:5])}{' ...' if len(missing_p) > 5 else ''}")
        raise InputError(pred, "; ".join(parts))
    label = group or plabel
    return [EvalItem(k, targets[k], pred=preds[k], group=label, crop_top=crop_top)
            for k in sorted(preds, key=natural_key)]


def items_with_predictions(items: Sequence[EvalItem], pred: str | Path, pred_suffix: str = "") -> List[EvalItem]:
    """Attach saved predictions (folder / glob, matched by name) to dataset items (for the subsets)."""
    preds, _ = _keyed_images(pred, pred_suffix)
    missing = [it.name for it in items if it.name not in preds]
    if missing:
        raise InputError(pred, f"no prediction for {len(missing)} image(s), e.g. {', '.join(missing[:5])}")
    return [dataclasses.replace(it, pred=preds[it.name]) for it in items]


# ---------------------------------------------------------------- scoring


def _score(pred: np.ndarray, target: np.ndarray, item: EvalItem, settings: EvalSettings,
           mask: Optional[np.ndarray]) -> Dict[str, float]:
    if pred.shape != target.shape:
        raise InputError(item.pred or item.source or item.target,
                         f"size {pred.shape[1]}x{pred.shape[0]} differs from the target's "
                         f"{target.shape[1]}x{target.shape[0]}")
    c = item.crop_top
    if c:
        if c >= target.shape[0]:
            raise InputError(item.target, f"crop-top {c} removes the whole image ({target.shape[0]} rows)")
        pred, target = pred[c:], target[c:]
    m = None
    if mask is not None:
        if mask.shape[0] == target.shape[0] + c and c:
            mask = mask[c:]
        if mask.shape != target.shape[:2]:
            raise InputError(settings.mask, f"mask is {mask.shape[1]}x{mask.shape[0]} but the scored image is "
                                            f"{target.shape[1]}x{target.shape[0]}")
        m = mask
    return M.compute_metrics(pred, target, settings.metrics, ssim_window=settings.ssim_window, mask=m)


def evaluate_predictions(items: Sequence[EvalItem], settings: EvalSettings = EvalSettings(),
                         progress: Optional[Progress] = None) -> EvalReport:
    """Score saved predictions (``item.pred``) against their targets."""
    if not items:
        raise CmddError("nothing to evaluate")
    mask = _load_mask(settings.mask)
    rows = []
    for it in _each(items, "pred", "no prediction to score", progress):
        pred = np.clip(load_for_eval(it.pred, settings.bits), 0.0, 1.0)
        target = load_for_eval(it.target, settings.bits)
        scores = _score(pred, target, it, settings, mask)
        rows.append(EvalRow(it.name, it.group, it.subset, *target.shape[:2], scores))
    return _report(rows, settings, {"mode": "predictions"})


def evaluate_model(deblurrer, items: Sequence[EvalItem], settings: EvalSettings = EvalSettings(),
                   save_dir: Optional[str | Path] = None, progress: Optional[Progress] = None) -> EvalReport:
    """Run `deblurrer` (a :class:`cmddcli.engine.Deblurrer`) on each ``item.source`` and score it.

    With `save_dir`, restored images are written there as PNG (``<group>/<name>.png``, 8 or 16 bit as
    `settings.bits`); scores always use the unquantised output.
    """
    if not items:
        raise CmddError("nothing to evaluate")
    mask = _load_mask(settings.mask)
    rows = []
    save_errors: List[str] = []
    for it in _each(items, "source", "no input image for the model", progress):
        x = load_for_eval(it.source, settings.bits)
        t0 = time.perf_counter()
        y = deblurrer.restore(x.astype(np.float32))
        dt = time.perf_counter() - t0
        y = np.clip(y.astype(np.float64), 0.0, 1.0)
        if save_dir is not None:
            try:
                write_png(Path(save_dir) / it.group / f"{it.name}.png", from_float(y, settings.bits))
            except OSError as e:  # e.g. a full disk: scoring goes on, the CLI exits 1
                save_errors.append(f"{it.group}/{it.name}.png: {e.strerror or e}")
                log.warning("cannot save %s/%s.png (%s)", it.group, it.name, e.strerror or e)
        target = load_for_eval(it.target, settings.bits)
        scores = _score(y, target, it, settings, mask)
        rows.append(EvalRow(it.name, it.group, it.subset, *target.shape[:2], scores, seconds=dt))
    extra = {"mode": "model"}
    if save_errors:
        extra["save_errors"] = save_errors
    describe = getattr(deblurrer, "describe", None)
    if callable(describe):
        extra["engine"] = describe()
    return _report(rows, settings, extra)


def _each(items: Sequence[EvalItem], needs: str, missing: str, progress: Optional[Progress]) -> Iterator[EvalItem]:
    """The items in order, failing on one whose ``needs`` attribute is None and reporting progress
    (``progress(done, total, name)`` before each item, and ``(total, total, "")`` after the last)."""
    for i, it in enumerate(items):
        if getattr(it, needs) is None:
            raise CmddError(f"{it.name}: {missing}")
        if progress:
            progress(i, len(items), it.name)
        yield it
    if progress:
        progress(len(items), len(items), "")


def _report(rows: List[EvalRow], settings: EvalSettings, extra: dict) -> EvalReport:
    return EvalReport(settings=settings.describe(), rows=rows, summary=summarise(rows, settings.metrics),
                      metrics=settings.metrics, extra=extra)


_SUBSET_ORDER = {"indoor": 0, "outdoor": 1}


def summarise(rows: Sequence[EvalRow], metrics: Iterable[str]) -> List[SummaryRow]:
    """Per-image means: for each group its subsets (indoor / outdoor) and ``combined``; then, when there
    is more than one group, ``all`` / ``combined`` over every image. The last row covers everything."""
    metrics = tuple(metrics)

    def mean_row(group: str, subset: str, rs: Sequence[EvalRow]) -> SummaryRow:
        means = {}
        for m in metrics:
            vals = [r.scores[m] for r in rs if math.isfinite(r.scores[m])]
            means[m] = float(np.mean(vals)) if vals else None
        identical = sum(1 for r in rs if "psnr" in r.scores and math.isinf(r.scores["psnr"]))
        return SummaryRow(group, subset, len(rs), means, identical)

    groups: Dict[str, List[EvalRow]] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    out = []
    for g, rs in groups.items():
        subsets = sorted({r.subset for r in rs if r.subset}, key=lambda s: (_SUBSET_ORDER.get(s, 9), s))
        for s in subsets:
            out.append(mean_row(g, s, [r for r in rs if r.subset == s]))
        out.append(mean_row(g, "combined", rs))
    if len(groups) > 1:
        out.append(mean_row("all", "combined", list(rows)))
    return out
