"""The published DPDD / RealDOF evaluation protocol (SPEC §3), for a model or for saved predictions.

Protocol (defaults):
- images are read and, with ``bits=8`` (the published single-image numbers), reduced to 8 bit the way
  ``cv2.imread`` reads a 16-bit PNG (libpng ``png_set_strip_16``: the high byte, ``v >> 8``); with
  ``bits=16`` they are used at their stored depth (8-bit files stay 8-bit);
- the network sees the whole image (no tiling unless ``tile`` is set) in fp32;
- the output is clamped to [0, 1] and **not** quantised (saved images, if asked for, are);
- PSNR / SSIM / MAE from :mod:`cmddcli.eval.metrics` per image (scikit-image conventions), then averaged
  per image over the indoor / outdoor / combined subsets of the DPDD test split; an image identical to
  its target has an infinite PSNR: it is counted in ``identical``, left out of the PSNR mean (which
  is null when every image is identical), and written as null in JSON (``inf`` in the CSV), so
  the JSON is strict RFC 8259 and one perfect image does not turn the mean into inf;
- the input (blurred) image of each pair, when the pair has one, is scored the same way: the report
  gives its scores beside the model's (``input_scores`` per image, ``input_means`` per subset) and the
  gain, model minus input, which is what a deblurring method adds (``gains``: PSNR and colour-fair
  PSNR in dB). Colour-fair PSNR (``psnr_cf``, not published; :mod:`cmddcli.eval.metrics`) forgives
  the global exposure / colour difference between DPDD's two shots;
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
import io
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from ..atomic import atomic_write_bytes
from ..data.discovery import find_pairs, keyed_images, natural_key
from ..fileutil import finite_json, sha256_file
from ..errors import CmddError, InputError
from ..photo.arrays import from_float, image_size, read_image, write_png
from . import metrics as M

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
    "gather_items",
    "run_eval",
    "summarise",
]

ImageProgress = Callable[[int, int, str], None]  # (done, total, current name)

GAIN_METRICS = ("psnr", "psnr_cf")  # metrics whose model-minus-input gain (dB) the report gives


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

    metrics: tuple = ("psnr", "ssim", "mae", "psnr_cf")
    bits: int = 8
    ssim_window: str = "uniform"
    mask: Optional[str] = None
    tile: int = 0  # 0 = whole image (the protocol)
    precision: str = "fp32"
    device: str = "auto"
    antiring: str = "card"  # the anti-ringing clamp (cmddcli.engine.antiring): card, off or "W,M"

    def __post_init__(self):
        from ..engine.antiring import parse_antiring

        parse_antiring(self.antiring)  # CmddError now, not after loading the weights
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
    """One scored image: name, group, subset, height and width (px), scores by metric (PSNR in dB), seconds."""
    name: str
    group: str
    subset: Optional[str]
    height: int
    width: int
    scores: Dict[str, float]
    seconds: float = 0.0  # model time (0 when scoring saved predictions)
    input_scores: Optional[Dict[str, float]] = None  # the blurred input's scores, when the pair has an input


@dataclass
class SummaryRow:
    """Per-image means over a group / subset (see :func:`summarise`)."""
    group: str
    subset: str  # "indoor" / "outdoor" / "combined"
    count: int
    means: Dict[str, Optional[float]]  # None: no finite value (PSNR when every image is identical)
    identical: int = 0  # images equal to their target (infinite PSNR), left out of the PSNR mean
    input_means: Optional[Dict[str, Optional[float]]] = None  # the inputs' means, when every row has them

    def gain(self, metric: str) -> Optional[float]:
        """Model mean minus input mean for ``metric`` (dB for PSNR), or None without input scores."""
        if self.input_means is None or self.means.get(metric) is None or self.input_means.get(metric) is None:
            return None
        return self.means[metric] - self.input_means[metric]


@dataclass
class EvalReport:
    """The result of one evaluation: per-image rows and per-subset means.

    Attributes:
        settings: :meth:`EvalSettings.describe` (the protocol used, in words and values).
        rows: one :class:`EvalRow` per image, in the order scored; scores are unitless except
            PSNR (dB); an identical pair has ``psnr = inf``.
        summary: :func:`summarise`'s rows (subsets, ``combined`` per group, then ``all``); the last
            covers every image.
        metrics: the metric names scored, in column order.
        extra: ``mode`` (``model`` / ``predictions``), the engine description, ``save_errors`` ...
    """

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
            "summary": [{**dataclasses.asdict(s), "gains": {m: s.gain(m) for m in GAIN_METRICS if m in self.metrics}}
                        for s in self.summary],
            "images": [dataclasses.asdict(r) for r in self.rows],
        })

    def csv_text(self) -> str:
        """One row per image: the model's scores, then (when any pair has an input) the input's scores
        (``input_<metric>``) and the gains (``gain_psnr``, ``gain_psnr_cf``; empty without an input)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        with_input = any(r.input_scores is not None for r in self.rows)
        gains = [m for m in GAIN_METRICS if m in self.metrics] if with_input else []
        extra = ([f"input_{m}" for m in self.metrics] + [f"gain_{m}" for m in gains]) if with_input else []
        w.writerow(["name", "group", "subset", "height", "width", *self.metrics, *extra, "seconds"])
        for r in self.rows:
            cells = []
            if with_input:
                i = r.input_scores
                cells = [_fmt(i[m]) if i else "" for m in self.metrics]
                cells += [_fmt(r.scores[m] - i[m]) if i else "" for m in gains]
            w.writerow([r.name, r.group, r.subset or "", r.height, r.width,
                        *(_fmt(r.scores[m]) for m in self.metrics), *cells, f"{r.seconds:.4f}"])
        return buf.getvalue()

    def write(self, out_dir: str | Path) -> Dict[str, Path]:
        """Write ``per_image.csv`` and ``summary.json`` (this run) atomically into `out_dir`, and add
        this run's summary as one line to ``history.jsonl`` there (every run into the folder, oldest
        first), so an earlier run's scores are not lost when the folder is reused."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "per_image.csv", "json": out / "summary.json", "history": out / "history.jsonl"}
        atomic_write_bytes(paths["csv"], self.csv_text().encode(), fsync=False)
        summary = self.to_json()
        text = json.dumps(summary, indent=2, default=_json_default, allow_nan=False)
        atomic_write_bytes(paths["json"], (text + "\n").encode(), fsync=False)
        old = paths["history"].read_bytes() if paths["history"].is_file() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        line = json.dumps(summary, default=_json_default, allow_nan=False) + "\n"
        atomic_write_bytes(paths["history"], old + line.encode(), fsync=False)
        return paths


def _fmt(v: float) -> str:
    return repr(float(v))


def _json_default(o):
    """Anything JSON cannot hold (paths, mostly) as its text; non-finite floats are None by then."""
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


def _is_gray(img: np.ndarray) -> bool:
    """True if an HxWx3 image's three channels are equal (a grayscale file, as read_image expands it)."""
    return bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]))


def _load_mask(path: Optional[str]) -> Optional[np.ndarray]:
    if not path:
        return None
    a = read_image(path, channels=0)
    if a.ndim == 3:
        a = a[..., :3].max(axis=2) if a.shape[2] >= 3 else a[..., 0]
    return a > 0


# ---------------------------------------------------------------- finding items


def items_from_data(path: str | Path, split: str = "test", group: Optional[str] = None,
                    crop_top: int = 0) -> List[EvalItem]:
    """Model-mode items (source + target) from a manifest, a DPDD / RealDOF tree or a pairs folder
    (found by :func:`cmddcli.data.discovery.find_pairs`). Raises InputError when none are found."""
    pairs, dataset = find_pairs(path, split)
    label = group or dataset
    return [EvalItem(q.name, q.target, source=q.source, subset=q.subset, group=label, crop_top=crop_top)
            for q in pairs]


def items_from_predictions(pred: str | Path, target: str | Path, pred_suffix: str = "",
                           crop_top: int = 0, group: Optional[str] = None) -> List[EvalItem]:
    """Saved predictions matched to targets by key (see :func:`_keyed_images`). Unmatched files on
    either side are an error naming them. Two single files are paired whatever their names."""
    preds, plabel = keyed_images(pred, pred_suffix)
    targets, _ = keyed_images(target)
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


def _per_set(values: Sequence[int], n: int, flag: str) -> List[int]:
    """One value for every set, one per set, or none (0)."""
    if not values:
        return [0] * n
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise CmddError(f"{flag} was given {len(values)} times for {n} sets (give it once, or once per set)")
    return list(values)


def _distinct_groups(sets: List[List[EvalItem]], specs: Sequence[str]) -> List[EvalItem]:
    """The sets' items, each set under a label of its own: a label two sets would share (two
    ``source/`` + ``target/`` folders are both "pairs") becomes the set's folder name; one still
    taken, or ``all`` (the report's row over every set), gets ``#2``, ``#3``, ... appended."""
    labels = [s[0].group if s else "" for s in sets]
    shared = {lab for lab in labels if labels.count(lab) > 1}
    used: set = set()
    out: List[EvalItem] = []
    for s, lab, spec in zip(sets, labels, specs):
        if lab in shared:
            lab = Path(str(spec).rstrip("/\\")).name or lab
        base, k = lab, 1
        while lab in used or lab == "all":
            k += 1
            lab = f"{base}#{k}"
        used.add(lab)
        out += [dataclasses.replace(it, group=lab) if it.group != lab else it for it in s]
    return out


def gather_items(*, data: Sequence[str] = (), pred: Sequence[str] = (), target: Sequence[str] = (),
                 split: str = "test", pred_suffix: str = "", crop_top: Sequence[int] = (), limit: int = 0,
                 with_weights: bool = False) -> List[EvalItem]:
    """The items of one ``cmdd eval`` call: sets of saved predictions (``pred`` paired in order with
    ``target`` or with ``data``), or data sets for the model (``data`` alone).

    ``crop_top`` is given once for every set or once per set; ``limit`` keeps the first N images of
    each set (0 = all); each set is one group of the report, named by :func:`_distinct_groups`.
    Raises CmddError for combinations that make no sense (``--pred`` with both ``--target`` and
    ``--data``, unpaired sets, ``with_weights`` when scoring predictions, ...)."""
    sets: List[List[EvalItem]] = []
    if pred:
        if target and data:
            raise CmddError("give --pred with either --target or --data, not both")
        refs = target or data
        if not refs:
            raise CmddError("--pred needs --target (images to compare with) or --data (a dataset's targets)")
        if len(refs) != len(pred):
            raise CmddError(f"{len(pred)} --pred but {len(refs)} --{'target' if target else 'data'} "
                            "(give them in pairs)")
        crops = _per_set(crop_top, len(pred), "--crop-top")
        for p, r, c in zip(pred, refs, crops):
            if target:
                set_items = items_from_predictions(p, r, pred_suffix=pred_suffix, crop_top=c)
            else:
                set_items = items_with_predictions(items_from_data(r, split, crop_top=c), p, pred_suffix)
            sets.append(set_items[:limit] if limit else set_items)
        if with_weights:
            raise CmddError("--weights is for model evaluation; drop it when scoring --pred images")
        return _distinct_groups(sets, list(pred))
    if target:
        raise CmddError("--target needs --pred (to score saved predictions)")
    if not data:
        raise CmddError("nothing to evaluate: give --data (with --weights) or --pred with --target")
    for d, c in zip(data, _per_set(crop_top, len(data), "--crop-top")):
        set_items = items_from_data(d, split, crop_top=c)
        sets.append(set_items[:limit] if limit else set_items)
    return _distinct_groups(sets, list(data))


def run_eval(items: Sequence[EvalItem], settings: EvalSettings = EvalSettings(), *,
             weights: Optional[str | Path] = None, save_dir: Optional[str | Path] = None,
             progress: Optional[ImageProgress] = None, threads: Optional[int] = None) -> EvalReport:
    """Score ``items``: their saved predictions when they have them, else the network (``weights``,
    default the shipped ones, on ``settings.device`` / ``precision`` / ``tile``, ``threads`` CPU
    threads, default all), saving its outputs under ``save_dir`` when given. The report's extra
    records what was scored (``sets``: label, crop and count per set), the weights and their
    sha256, the cmdd version and the time."""
    from .. import __version__

    check_pairs(items, settings)
    if items and all(it.pred is not None for it in items):
        report = evaluate_predictions(items, settings, progress=progress)
    else:
        from ..engine import Deblurrer

        engine = Deblurrer(weights, device=settings.device, precision=settings.precision, tile=settings.tile,
                           threads=threads, antiring=settings.antiring)
        report = evaluate_model(engine, items, settings, save_dir=save_dir, progress=progress)
        path = engine.weights_path
        report.extra["weights"] = {"path": str(path) if path else None,
                                   "sha256": sha256_file(path) if path else None}
        report.extra["antiring"] = engine.antiring.describe() if engine.antiring else "off"
    sets: Dict[str, dict] = {}
    for it in items:
        entry = sets.setdefault(it.group, {"group": it.group, "crop_top": it.crop_top, "images": 0,
                                           "target_folder": str(Path(it.target).parent)})
        entry["images"] += 1
    report.extra.update({"sets": list(sets.values()), "cmdd_version": __version__,
                         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return report


def check_pairs(items: Sequence[EvalItem], settings: EvalSettings = EvalSettings(), limit: int = 8) -> None:
    """Before any image is restored or scored: every pair's files can be read (their headers), the
    input (or prediction) has the target's size, ``crop_top`` leaves rows, and what is scored is at
    least the SSIM window. All problems are listed in one InputError (the first ``limit``), so a
    published mean is never taken over a silent subset and one bad pair does not hide the others."""
    problems: List[str] = []
    window = 11 if settings.ssim_window == "gaussian" else 7
    for it in items:
        first = it.pred if it.pred is not None else it.source
        try:
            tw, th = image_size(it.target)
        except InputError:  # TIFFs Pillow cannot open, ...: loading them says why, if anything is wrong
            continue
        if first is not None and Path(first).suffix.lower() == ".png" and Path(it.target).suffix.lower() == ".png":
            try:  # PNG headers have no orientation tag: their sizes are the decoded sizes
                w, h = image_size(first)
                if (w, h) != (tw, th):
                    raise InputError(first, f"size {w}x{h} differs from the target's {tw}x{th}")
            except InputError as e:
                problems.append(str(e))
                continue
        if it.crop_top >= th:
            problems.append(f"{it.target}: crop-top {it.crop_top} removes the whole image ({th} rows)")
        elif "ssim" in settings.metrics and min(th - it.crop_top, tw) < window:
            problems.append(f"{it.target}: {tw}x{th - it.crop_top} scored is smaller than the "
                            f"{window}x{window} SSIM window")
    if problems:
        shown = "; ".join(problems[:limit])
        more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
        raise CmddError(f"{len(problems)} problem(s) in the pairs to score: {shown}{more}")


def items_with_predictions(items: Sequence[EvalItem], pred: str | Path, pred_suffix: str = "") -> List[EvalItem]:
    """Attach saved predictions (folder / glob, matched by name) to dataset items (for the subsets)."""
    preds, _ = keyed_images(pred, pred_suffix)
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
    try:
        return M.compute_metrics(pred, target, settings.metrics, ssim_window=settings.ssim_window, mask=m)
    except CmddError as e:  # e.g. smaller than the SSIM window: say which image
        raise InputError(item.target, str(e)) from e


def _input_scores(item: EvalItem, target: np.ndarray, settings: EvalSettings,
                  mask: Optional[np.ndarray]) -> Optional[Dict[str, float]]:
    """The blurred input's scores against ``target`` (already loaded), or None when the item has no input."""
    if item.source is None:
        return None
    return _score(load_for_eval(item.source, settings.bits), target, item, settings, mask)


def evaluate_predictions(items: Sequence[EvalItem], settings: EvalSettings = EvalSettings(),
                         progress: Optional[ImageProgress] = None) -> EvalReport:
    """Score saved predictions (``item.pred``) against their targets."""
    if not items:
        raise CmddError("nothing to evaluate")
    mask = _load_mask(settings.mask)
    rows, gray = [], []
    for it in _each(items, "pred", "no prediction to score", progress):
        pred = np.clip(load_for_eval(it.pred, settings.bits), 0.0, 1.0)
        target = load_for_eval(it.target, settings.bits)
        if _is_gray(pred) and not _is_gray(target):
            gray.append(it.pred)
        scores = _score(pred, target, it, settings, mask)
        rows.append(EvalRow(it.name, it.group, it.subset, *target.shape[:2], scores,
                            input_scores=_input_scores(it, target, settings, mask)))
    if gray:
        log.warning("%d prediction(s) are grayscale while their targets are in colour (%s%s): scored as three "
                    "equal channels", len(gray), gray[0], ", ..." if len(gray) > 1 else "")
    return _report(rows, settings, {"mode": "predictions"})


def _folder_name(label: str) -> str:
    """A set label as one folder name under ``--out``: path separators and anything unusual become
    ``_`` (a label is never a path, so saved images cannot land outside the output folder)."""
    name = re.sub(r"[^A-Za-z0-9._#+-]+", "_", label).strip("._")
    return name or "set"


def evaluate_model(deblurrer, items: Sequence[EvalItem], settings: EvalSettings = EvalSettings(),
                   save_dir: Optional[str | Path] = None, progress: Optional[ImageProgress] = None) -> EvalReport:
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
                write_png(Path(save_dir) / _folder_name(it.group) / f"{it.name}.png", from_float(y, settings.bits))
            except OSError as e:  # e.g. a full disk: scoring goes on, the CLI exits 1
                save_errors.append(f"{it.group}/{it.name}.png: {e.strerror or e}")
                log.warning("cannot save %s/%s.png (%s)", it.group, it.name, e.strerror or e)
        target = load_for_eval(it.target, settings.bits)
        scores = _score(y, target, it, settings, mask)
        rows.append(EvalRow(it.name, it.group, it.subset, *target.shape[:2], scores, seconds=dt,
                            input_scores=_score(x, target, it, settings, mask)))
    extra = {"mode": "model"}
    if save_errors:
        extra["save_errors"] = save_errors
    describe = getattr(deblurrer, "describe", None)
    if callable(describe):
        extra["engine"] = describe()
    return _report(rows, settings, extra)


def _each(items: Sequence[EvalItem], needs: str, missing: str, progress: Optional[ImageProgress]) -> Iterator[EvalItem]:
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
        input_means = None
        if rs and all(r.input_scores is not None for r in rs):
            input_means = {}
            for m in metrics:
                vals = [r.input_scores[m] for r in rs if math.isfinite(r.input_scores[m])]
                input_means[m] = float(np.mean(vals)) if vals else None
        return SummaryRow(group, subset, len(rs), means, identical, input_means)

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
