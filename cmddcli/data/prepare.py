"""`cmdd prepare dpdd | realdof | pairs`: discovery → crops (train/val) or listing (test) → manifest.

Output folder layout (``OUT``)::

    OUT/manifest.json                      # see manifest.py
    OUT/train/{source,target}/NAME_yYYYY_xXXXX[_h|_v].png   # 16-bit kept
    OUT/val/{source,target}/NAME_yYYYY_xXXXX.png
    OUT/.cmdd-prepare/{split}/NAME.json    # per-image records that make re-runs instant

The test split (and RealDOF, and ``pairs`` unless cropping is asked for) is not copied: the manifest
points at the original full-size files, relative to ``OUT``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import InputError
from .crops import FLIPS, RECORD_DIR, CropJob, CropOptions, CropResult, entry_from_result, run_crop_job, stride_for
from .discovery import Discovery, RawPair, discover_dpdd, discover_pairs, discover_realdof, raise_problems
from ..fileutil import sha256_file
from .manifest import MANIFEST_NAME, SPLITS, Manifest, PairEntry, relpath, save_manifest, sha256_bytes
from ..atomic import atomic_write_bytes, ensure_output_dir
from ..photo.arrays import encode_png, from_float, image_size, png_header
from .sources import SharpnessFilter, SharpTile, list_images, load_sharp, sharp_tiles

if TYPE_CHECKING:
    from .synth import SynthConfig

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (done, total)


@dataclass
class PrepareResult:
    manifest_path: Path
    dataset: str
    counts: dict[str, int]
    written: int = 0  # crop files written in this run
    kept: int = 0  # crop files found complete and reused
    notes: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)  # inputs left out: {"path", "reason"}

    def to_json(self) -> dict[str, Any]:
        return {"manifest": str(self.manifest_path), "dataset": self.dataset, "counts": self.counts,
                "written": self.written, "kept": self.kept, "notes": self.notes, "failed": self.failed}


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


# --------------------------------------------------------------------------------------------------
# running jobs in a process pool


def _init_worker() -> None:
    # one thread per worker process: the pool is the parallelism (set before torch is imported)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"


def _guarded(fn: Callable, job: Any) -> tuple:
    # InputError does not survive pickling (its __init__ takes two arguments), so carry its parts.
    try:
        return ("ok", fn(job))
    except InputError as e:
        return ("input_error", e.path, e.reason)


def map_jobs(fn: Callable, jobs: Sequence[Any], workers: int = 1, progress: ProgressFn | None = None) -> list:
    """``[fn(job) for job in jobs]``, in a spawn process pool when ``workers > 1``; results keep
    the jobs' order. The first InputError raised by a job is re-raised here."""
    results: list = [None] * len(jobs)
    done = 0
    if progress:
        progress(0, len(jobs))

    def take(i: int, r: tuple) -> None:
        nonlocal done
        if r[0] == "input_error":
            raise InputError(r[1], r[2])
        results[i] = r[1]
        done += 1
        if progress:
            progress(done, len(jobs))

    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            take(i, _guarded(fn, job))
        return results
    ctx = multiprocessing.get_context("spawn")  # torch + fork is not safe
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker) as pool:
        futures = {pool.submit(_guarded, fn, job): i for i, job in enumerate(jobs)}
        try:
            for fut in as_completed(futures):
                take(futures[fut], fut.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results


# --------------------------------------------------------------------------------------------------
# full-image listing (test split, RealDOF, pairs)


@dataclass(frozen=True)
class ListJob:
    pair: RawPair
    out_dir: str


def run_list_job(job: ListJob) -> dict[str, Any]:
    """Manifest entry for a full-size pair: size, bit depth, checksums, paths relative to out_dir."""
    p = job.pair
    w, h = image_size(p.source)
    hdr = png_header(p.source)
    bits = hdr[2] if hdr is not None else 8
    return {
        "name": p.name, "split": p.split, "subset": p.subset,
        "source": relpath(p.source, job.out_dir), "target": relpath(p.target, job.out_dir),
        "width": w, "height": h, "bit_depth": bits,
        "sha256_source": sha256_file(p.source), "sha256_target": sha256_file(p.target),
        "origin": p.name, "window": None, "flip": None,
        "extra": {k: relpath(v, job.out_dir) for k, v in p.extra.items()},
    }


# --------------------------------------------------------------------------------------------------
# the prepare entry points


def _build(disc: Discovery, out: Path, crop_splits: dict[str, CropOptions], params: dict[str, Any],
           workers: int, progress: ProgressFn | None) -> PrepareResult:
    raise_problems(disc)
    ensure_output_dir(out, "-o")
    out = out.resolve()
    for note in disc.notes:
        log.warning("%s", note)
    jobs: list = []
    for split, pairs in disc.pairs.items():
        for p in pairs:
            if split in crop_splits:
                jobs.append(CropJob(name=p.name, split=split, source=str(p.source), target=str(p.target),
                                    out_dir=str(out), options=crop_splits[split], subset=p.subset))
            else:
                jobs.append(ListJob(pair=p, out_dir=str(out)))
    fn_results = map_jobs(_dispatch, jobs, workers, progress)
    entries: list[PairEntry] = []
    written = kept = 0
    for r in fn_results:
        if isinstance(r, CropResult):
            entries += [entry_from_result(e) for e in r.entries]
            written += r.written
            kept += r.kept
        else:
            entries.append(PairEntry.from_json(r))
    manifest = Manifest(dataset=disc.dataset, entries=entries, root=out, params=params,
                        source_root=str(disc.base))
    path = save_manifest(manifest, out / MANIFEST_NAME)
    log.debug("%s: %d pairs (%s); %d crop files written, %d reused", path, len(entries),
             ", ".join(f"{k} {v}" for k, v in manifest.counts().items()), written, kept)
    return PrepareResult(manifest_path=path, dataset=disc.dataset, counts=manifest.counts(),
                         written=written, kept=kept, notes=list(disc.notes))


def _dispatch(job: Any) -> Any:
    return run_crop_job(job) if isinstance(job, CropJob) else run_list_job(job)


def _crop_options(window: int, overlap_fraction: float, stride: int | None, flips: Iterable[str],
                  drop_blurry: float) -> CropOptions:
    flips = tuple(flips)
    bad = [f for f in flips if f not in FLIPS]
    if bad:
        raise InputError("--flips", f"unknown flip {bad[0]!r} (use h, v, hv or none)")
    if window < 1:
        raise InputError("--window", "must be at least 1")
    if not 0.0 <= drop_blurry < 1.0:
        raise InputError("--drop-blurry", "must be in [0, 1)")
    try:
        s = stride if stride else stride_for(window, overlap_fraction)
    except ValueError as e:
        raise InputError("--overlap", str(e)) from e
    return CropOptions(window=window, stride=s, flips=flips, drop_blurry=drop_blurry)


def prepare_dpdd(root: str | Path, out: str | Path, *, splits: Sequence[str] = SPLITS, window: int = 512,
                 overlap_fraction: float = 0.6, stride: int | None = None, flips: Iterable[str] = FLIPS,
                 drop_blurry: float = 0.0, val_crops: bool = True, workers: int = 1,
                 progress: ProgressFn | None = None) -> PrepareResult:
    """Prepare DPDD for training and evaluation.

    train: ``window``² crops at ``stride`` (default ⌊window·(1−overlap_fraction)⌋ = 204), last window flush
    with the border, plus one flipped copy per entry of ``flips``; optionally the ``drop_blurry``
    fraction of least-sharp windows per image dropped first (DPDNet/Restormer use 0.3).
    val: the same windows, no flips and no filter (``val_crops=False``: full images instead).
    test: full images, not copied, with SPEC §3's indoor/outdoor subsets.
    """
    train_opt = _crop_options(window, overlap_fraction, stride, flips, drop_blurry)
    val_opt = CropOptions(window=train_opt.window, stride=train_opt.stride, flips=(), drop_blurry=0.0)
    disc = discover_dpdd(root, tuple(splits))
    crop_splits = {"train": train_opt}
    if val_crops:
        crop_splits["val"] = val_opt
    params = {"train": train_opt.to_json(), "val": val_opt.to_json() if val_crops else "full images",
              "test": "full images", "layout": disc.layout, "splits": list(splits)}
    return _build(disc, Path(out), crop_splits, params, workers, progress)


def prepare_realdof(root: str | Path, out: str | Path, *, workers: int = 1,
                    progress: ProgressFn | None = None) -> PrepareResult:
    """RealDOF (test only): full images listed with sizes and checksums."""
    disc = discover_realdof(root)
    return _build(disc, Path(out), {}, {"test": "full images"}, workers, progress)


def prepare_pairs(root: str | Path, out: str | Path, *, split: str = "test", crop: bool = False,
                  window: int = 512, overlap_fraction: float = 0.6, stride: int | None = None,
                  flips: Iterable[str] = FLIPS, drop_blurry: float = 0.0, workers: int = 1,
                  progress: ProgressFn | None = None) -> PrepareResult:
    """Any ``source/`` + ``target/`` folder (or ``{train,val,test}/{source,target}``), matched by
    file stem. Full images are listed; with ``crop=True`` the train split is cropped like DPDD's
    (and val without flips)."""
    if split not in SPLITS:
        raise InputError("--split", f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    disc = discover_pairs(root, split)
    crop_splits: dict[str, CropOptions] = {}
    params: dict[str, Any] = {}
    if crop:
        opt = _crop_options(window, overlap_fraction, stride, flips, drop_blurry)
        crop_splits = {"train": opt, "val": CropOptions(opt.window, opt.stride, (), 0.0)}
        params = {"train": opt.to_json(), "val": crop_splits["val"].to_json()}
    return _build(disc, Path(out), crop_splits, params, workers, progress)


# --------------------------------------------------------------------------------------------------
# synthetic pairs (`cmdd prepare synth`)


@dataclass(frozen=True)
class TileJob:
    path: str
    patch: int
    max_side: int | None
    filt: SharpnessFilter


def run_tile_job(job: TileJob) -> list[SharpTile] | str:
    """The photograph's sharp tiles, or why it cannot be read (a bad file is left out, not fatal)."""
    try:
        return sharp_tiles(load_sharp(job.path, job.max_side), job.patch, filt=job.filt, path=job.path)
    except InputError as e:
        return e.reason if os.fspath(e.path) == job.path else str(e)


@dataclass(frozen=True)
class SynthJob:
    image: str  # absolute path of the sharp photograph
    origin: str  # its path relative to the sharp folder
    items: tuple[tuple[int, str, int, int], ...]  # (pair index, split, y, x) of patch-sized tiles
    out_dir: str
    seed: int
    patch: int
    max_side: int | None
    config: SynthConfig
    bits: int
    save_depth: bool
    reuse: frozenset = frozenset()  # pair indices whose files, if complete, an earlier run made from this plan


def run_synth_job(job: SynthJob) -> CropResult:
    """Synthesise the pairs of one photograph; a pair in ``job.reuse`` whose files are all there is
    kept as it is (an earlier run with the same settings made it from the same photo and window)."""
    out = Path(job.out_dir)
    res = CropResult()
    img = None
    kinds = ("source", "target", "depth") if job.save_depth else ("source", "target")
    for index, split, y, x in job.items:
        name = f"synth_{index:06d}"
        paths = {k: out / split / k / f"{name}.png" for k in kinds}
        want = {k: (job.patch, job.patch, 16 if k == "depth" else job.bits) for k in kinds}
        done = index in job.reuse and all((h := png_header(p)) is not None and h[:3] == want[k]
                                           for k, p in paths.items())
        digests: dict[str, str] = {}
        if done:
            digests = {k: sha256_file(p) for k, p in paths.items()}
            res.kept += len(paths)
        else:
            if img is None:
                from .synth import synthesize  # torch: only where pairs are made

                img = load_sharp(job.image, job.max_side)
            rng = np.random.default_rng([job.seed, index])
            crop = img[y:y + job.patch, x:x + job.patch]
            if rng.uniform() < 0.5:
                crop = crop[:, ::-1]
            if rng.uniform() < 0.5:
                crop = crop[::-1, :]
            s = synthesize(np.ascontiguousarray(crop), rng, job.config)
            arrays = {"source": from_float(s.blurred, job.bits), "target": from_float(s.target, job.bits),
                      "depth": from_float(s.disparity, 16)}
            for k, p in paths.items():
                data = encode_png(arrays[k])
                atomic_write_bytes(p, data, fsync=False)
                digests[k] = sha256_bytes(data)
                res.written += 1
        res.entries.append({
            "name": name, "split": split, "subset": None,
            "source": relpath(paths["source"], out), "target": relpath(paths["target"], out),
            "width": job.patch, "height": job.patch, "bit_depth": job.bits,
            "sha256_source": digests["source"], "sha256_target": digests["target"],
            "origin": job.origin, "window": [y, x, job.patch, job.patch], "flip": None,
            "extra": {"depth": relpath(paths["depth"], out)} if job.save_depth else {},
        })
    return res


def _sharp_tiles_cached(images: list[Path], out: Path, patch: int, max_side: int | None, filt: SharpnessFilter,
                        workers: int) -> tuple[list[list[SharpTile]], dict[Path, str]]:
    """Sharp tiles per image, remembered in OUT/.cmdd-prepare/synth_tiles.json (keyed by path, size,
    mtime and the options) so that re-runs do not decode every photograph again; and {image: why it
    cannot be read} for the unreadable ones (no tiles, not remembered: a mended file is read again)."""
    cache_path = out / RECORD_DIR / "synth_tiles.json"
    key = {"patch": patch, "max_side": max_side, "filter": asdict(filt)}
    try:
        cache = json.loads(cache_path.read_text())
        if cache.get("key") != key:
            cache = {}
    except (OSError, ValueError):
        cache = {}
    known: dict[str, Any] = cache.get("images", {})
    stats = {str(p.resolve()): _stat_list(p) for p in images}
    todo = [p for p in images if known.get(str(p.resolve()), {}).get("stat") != stats[str(p.resolve())]]
    found = map_jobs(run_tile_job, [TileJob(str(p.resolve()), patch, max_side, filt) for p in todo], workers)
    unreadable: dict[Path, str] = {}
    for p, tiles in zip(todo, found):
        if isinstance(tiles, str):
            unreadable[p] = tiles
            continue
        known[str(p.resolve())] = {"stat": stats[str(p.resolve())], "tiles": [[t.y, t.x, t.score] for t in tiles]}
    if todo:
        atomic_write_bytes(cache_path, json.dumps({"key": key, "images": known}).encode(), fsync=False)
    tiles = [[] if p in unreadable else
             [SharpTile(path=str(p.resolve()), y=y, x=x, size=patch, score=sc, max_side=max_side)
              for y, x, sc in known[str(p.resolve())]["tiles"]] for p in images]
    return tiles, unreadable


def _synth_plan_reuse(out: Path, plan: dict, origins: dict, params: dict) -> set[int]:
    """Pair indices an earlier run planned exactly as this one (same settings, photo, split and window),
    read from OUT/.cmdd-prepare/synth_plan.json, which is then replaced by this run's plan (before any
    pair is made, so an interrupted run resumes from it). The files of every other earlier pair are
    removed: they were made from another photo, window or split, and would otherwise be kept under
    this run's labels or left behind in the wrong split."""
    path = out / RECORD_DIR / "synth_plan.json"
    pairs = {str(idx): [origins[i], split, y, x] for i, items in plan.items() for idx, split, y, x in items}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    same = old.get("params") == json.loads(json.dumps(params))  # tuples compare as the lists JSON gives back
    old_pairs = old.get("pairs", {}) if isinstance(old.get("pairs"), dict) else {}
    reuse = {int(k) for k, v in pairs.items() if same and old_pairs.get(k) == v}
    for k, v in old_pairs.items():
        if k.isdigit() and int(k) not in reuse and isinstance(v, list) and len(v) == 4 and v[1] in ("train", "val"):
            for kind in ("source", "target", "depth"):
                (out / v[1] / kind / f"synth_{int(k):06d}.png").unlink(missing_ok=True)
    atomic_write_bytes(path, json.dumps({"params": params, "pairs": pairs}).encode(), fsync=False)
    return reuse


def _stat_list(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def prepare_synth(sharp_dir: str | Path, out: str | Path, *, count: int = 1000, patch: int = 256, seed: int = 0,
                  val_fraction: float = 0.1, config: SynthConfig | None = None, bits: int = 8,
                  save_depth: bool = True, max_side: int | None = 1600,
                  filt: SharpnessFilter = SharpnessFilter(), workers: int = 1,
                  progress: ProgressFn | None = None) -> PrepareResult:
    """Synthetic blurred/sharp pairs from a folder of sharp photographs.

    Photographs are downscaled to ``max_side``, cut into ``patch``² tiles (stride patch/2) and only
    tiles that pass the sharpness filter are used. Photographs are split between train and val
    (about ``val_fraction`` of them go to val, never both), then each pair picks a photograph
    uniformly and one of its sharp tiles, flips it at random and synthesises the blur. Pair ``i``
    depends only on (seed, i) and the tile list: the worker count does not change the bytes.
    A photograph that cannot be read is left out, logged, and listed in the result's ``failed``.

    Raises:
        InputError: bad options, no images, or no usable (readable, sharp) tile at all.
    """
    from .synth import SynthConfig

    config = config or SynthConfig()
    sharp_dir, out = Path(sharp_dir), Path(out)
    if bits not in (8, 16):
        raise InputError("--bits", "must be 8 or 16")
    if count < 1:
        raise InputError("--count", f"must be at least 1, got {count}")
    if patch < filt.block or patch % filt.block:
        raise InputError("--size", f"the patch size must be a positive multiple of {filt.block}, got {patch}")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError("--val-fraction", "must be in [0, 1)")
    images = list_images(sharp_dir)
    if not images:
        raise InputError(sharp_dir, "no images found (png, jpg, tif, ...)")
    notes: list[str] = []
    ensure_output_dir(out, "-o")
    tiles_per_image, unreadable = _sharp_tiles_cached(images, out, patch, max_side, filt, workers)
    for p, why in unreadable.items():
        log.warning("%s: %s (left out)", p, why)
    usable = [(p, t) for p, t in zip(images, tiles_per_image) if t]
    skipped = [p for p, t in zip(images, tiles_per_image) if not t and p not in unreadable]
    if skipped:
        notes.append(f"{len(skipped)} of {len(images)} images have no sharp {patch}px tile and are not used")
        for p in skipped:
            log.debug("no sharp tile: %s", p)
    if not usable:
        raise InputError(sharp_dir, f"no image has a sharp {patch}px tile (all blurred, flat, too small"
                                    + (f", or unreadable: {len(unreadable)})" if unreadable else ")"))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(usable))
    n_val_img = int(round(val_fraction * len(usable))) if val_fraction > 0 and len(usable) > 1 else 0
    n_val_img = min(max(n_val_img, 1 if val_fraction > 0 and len(usable) > 1 else 0), len(usable) - 1)
    split_imgs = {"val": [usable[i] for i in order[:n_val_img]], "train": [usable[i] for i in order[n_val_img:]]}
    n_val = int(round(count * val_fraction)) if n_val_img else 0
    plan: dict[int, list[tuple[int, str, int, int]]] = {}
    index = 0
    for split, n in (("train", count - n_val), ("val", n_val)):
        group = split_imgs[split]
        for _ in range(n):
            k = int(rng.integers(len(group)))
            tile = group[k][1][int(rng.integers(len(group[k][1])))]
            plan.setdefault(images.index(group[k][0]), []).append((index, split, tile.y, tile.x))
            index += 1
    out = out.resolve()
    origins = {i: images[i].relative_to(sharp_dir).as_posix() for i in plan}
    reuse = _synth_plan_reuse(out, plan, origins, {"seed": seed, "patch": patch, "bits": bits, "max_side": max_side,
                                                   "save_depth": save_depth, "synth": config.to_json()})
    jobs = [SynthJob(image=str(images[i].resolve()), origin=origins[i], items=tuple(items), out_dir=str(out),
                     seed=seed, patch=patch, max_side=max_side, config=config, bits=bits, save_depth=save_depth,
                     reuse=frozenset(idx for idx, *_ in items if idx in reuse))
            for i, items in sorted(plan.items())]
    results = map_jobs(run_synth_job, jobs, workers, progress)
    entries = sorted((entry_from_result(e) for r in results for e in r.entries), key=lambda e: e.name)
    params = {"seed": seed, "count": count, "patch": patch, "val_fraction": val_fraction, "bits": bits,
              "max_side": max_side, "sharpness_filter": asdict(filt), "synth": config.to_json(),
              "images": {s: [p.relative_to(sharp_dir).as_posix() for p, _ in v] for s, v in split_imgs.items()}}
    manifest = Manifest(dataset="synth", entries=entries, root=out, params=params, source_root=str(sharp_dir.resolve()))
    path = save_manifest(manifest, out / MANIFEST_NAME)
    written = sum(r.written for r in results)
    kept = sum(r.kept for r in results)
    log.debug("%s: %d synthetic pairs; %d files written, %d reused", path, len(entries), written, kept)
    return PrepareResult(manifest_path=path, dataset="synth", counts=manifest.counts(), written=written,
                         kept=kept, notes=notes,
                         failed=[{"path": str(p), "reason": why} for p, why in unreadable.items()])
