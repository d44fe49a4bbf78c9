"""Prune trained weights to fewer selective-scan states, checked on real photos before writing.

    python scripts/prune_states.py SRC OUT --states 4 [--min-psnr 60] [--min-psnr-bf16 50]
        [--report FILE.md] [--dtype fp16] [--samples DIR] [--eval-data DIR[:CROP_TOP]] ...

SRC is a weights file or a packaged name (v1). cmddcli.model.prune.prune_states keeps the
slowest-decaying --states states of every SS2D layer. Then the full and the pruned network run
through the engine (cmddcli.engine.Deblurrer, default tiling) on every real defocused photo of the
bf16 check (benchmarks/bf16_check.py; --samples, default ../shared/samples/defocus, holding
dpdd_1024/blur/*.png, dpdd_gif_pairs/*_input.png and blurred_only/*.jpg). Per photo it reports,
on the 8-bit outputs, PSNR(pruned fp32, full fp32), PSNR(pruned bf16, full fp32) (what a CPU user
gets) and, for scale, PSNR(full bf16, full fp32).

OUT is written only if PSNR(pruned fp32, full fp32) >= --min-psnr on every photo (default 60 dB:
pruning may change the output no more than bf16 rounding does, 61.9 dB at worst for v1) and
PSNR(pruned bf16, full fp32) >= --min-psnr-bf16 (default 50 dB, the bf16 rule of benchmarks/bf16_check.py). This is a
numerical check that the pruned network computes the same function, not a quality score: no
photo's content chooses anything.

OUT keeps SRC's model card (absolute paths cut as scripts/package_default_weights.py does) and adds
"pruned": source name and SHA-256, the states kept per layer, the rule, the per-photo figures, and
the source's own scores ("source_scores": measured on the unpruned network). Each --eval-data
DIR[:CROP_TOP] (repeatable) scores the pruned network by the cmdd eval protocol (whole images,
fp32; DIR:48 is --crop-top 48, the caption band of dpdd_gif_pairs) and the card records the
summaries under "scores_real_dpdd".

Exit status: 0 written; 1 an error (one line on stderr; nothing written); 3 the rules were not met
(nothing written). Everything that can fail on the arguments (SRC, OUT, --report, --samples,
--eval-data) is checked before the photos are run.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import torch

from cmddcli.atomic import atomic_path, check_writable
from cmddcli.fileutil import sha256_file
from cmddcli.engine import Deblurrer
from cmddcli.errors import CmddError, run_script
from cmddcli.model import PRESETS
from cmddcli.model.prune import prune_states
from cmddcli.model.weights import load_weights, resolve_weights, save_weights
from cmddcli.photo import read_photo

ROOT = Path(__file__).resolve().parents[1]


def _helper(path: Path):
    """A module of this repository outside the package (benchmarks/, scripts/), loaded from its file."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_bf16_check = _helper(ROOT / "benchmarks" / "bf16_check.py")
_packaging = _helper(ROOT / "scripts" / "package_default_weights.py")
SAMPLES, photos, psnr8 = _bf16_check.SAMPLES, _bf16_check.photos, _bf16_check.psnr8
STORAGE_DTYPES, portable = _packaging.STORAGE_DTYPES, _packaging.portable

CARD_SKIP = {"format", "config", "preset", "version", "dtype"}  # save_weights writes these anew
RULES_NOT_MET = 3
COLUMNS = ("pruned fp32", "pruned bf16", "full bf16")


def check_out_path(src: Path, out: Path, what: str) -> None:
    """A derived weights file OUT (``what``: pruned, grown, recalibrated) must be a .safetensors file
    other than its source SRC. Raises CmddError otherwise. Shared by this script, grow_blocks.py and
    recalibrate_bn.py."""
    if out.suffix != ".safetensors":
        raise CmddError(f"{out}: the {what} weights file must end in .safetensors")
    if out.resolve() == src.resolve():
        raise CmddError(f"{out}: is the source weights file; write the {what} weights elsewhere")


def inherited_card(meta: dict) -> dict:
    """The source's model card for a derived weights file: absolute paths cut, without the fields
    save_weights writes anew (CARD_SKIP)."""
    return portable({k: v for k, v in meta.items() if k not in CARD_SKIP})


def preset_of(config) -> str | None:
    return next((name for name, (cfg, _) in PRESETS.items() if cfg == config), None)


def db(x: float):
    """A PSNR for the model card: rounded, or "identical" (outputs equal: infinite PSNR, not JSON)."""
    return round(x, 2) if math.isfinite(x) else "identical"


def parse_eval_data(spec: str) -> tuple[str, int]:
    """DIR or DIR:CROP_TOP -> (DIR, crop_top)."""
    d, sep, crop = spec.rpartition(":")
    return (d, int(crop)) if sep and crop.isdigit() else (spec, 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="weights file or packaged name (v1, v2)")
    ap.add_argument("out", type=Path, help="pruned weights file to write (.safetensors; not SRC)")
    ap.add_argument("--states", type=int, required=True, help="SSM states to keep per layer (fewer than SRC has)")
    ap.add_argument("--min-psnr", type=float, default=60.0,
                    help="least PSNR(pruned fp32, full fp32) on every photo, dB (default 60)")
    ap.add_argument("--min-psnr-bf16", type=float, default=50.0,
                    help="least PSNR(pruned bf16, full fp32) on every photo, dB (default 50, the bf16 rule)")
    ap.add_argument("--samples", type=Path, default=SAMPLES,
                    help="folder with dpdd_1024/blur/*.png, dpdd_gif_pairs/*_input.png, blurred_only/*.jpg")
    ap.add_argument("--dtype", choices=list(STORAGE_DTYPES), default="fp16", help="storage type of OUT")
    ap.add_argument("--report", type=Path, default=None, help="also write the table and verdict here (markdown)")
    ap.add_argument("--eval-data", action="append", default=[], metavar="DIR[:CROP_TOP]",
                    help="a pair set to score the pruned weights on, as cmdd eval --data DIR --crop-top CROP_TOP "
                         "(repeatable)")
    args = ap.parse_args()

    # Everything that can fail on the arguments, before the minutes of photos.
    src = resolve_weights(args.src)
    check_out_path(src, args.out, "pruned")
    clobbered = {src.resolve(): "source", args.out.resolve(): "pruned"}.get(args.report.resolve()) if args.report else None
    if clobbered:
        raise CmddError(f"{args.report}: the report would overwrite the {clobbered} weights file")
    full, meta = load_weights(src)
    pruned, kept = prune_states(full, args.states)
    check_writable(args.out, "pruned weights file")
    if args.report:
        check_writable(args.report, "report")
    files = photos(args.samples)
    if not files:
        raise CmddError(f"{args.samples}: no photos (expected dpdd_1024/blur/*.png, dpdd_gif_pairs/*_input.png "
                        "or blurred_only/*.jpg)")
    eval_sets = []
    if args.eval_data:
        from cmddcli.eval.protocol import gather_items

        for spec in args.eval_data:
            d, crop = parse_eval_data(spec)
            eval_sets.append((d, crop, gather_items(data=[d], crop_top=[crop])))

    engines = {
        "full fp32": Deblurrer(model=full, device="cpu", precision="fp32"),
        "full bf16": Deblurrer(model=full, device="cpu", precision="bf16"),
        "pruned fp32": Deblurrer(model=pruned, device="cpu", precision="fp32"),
        "pruned bf16": Deblurrer(model=pruned, device="cpu", precision="bf16"),
    }
    N = full.config.d_state
    src_sha256 = sha256_file(src)
    head = [
        f"Source: {src.name} (SHA-256 {src_sha256[:16]}…), {N} states -> {args.states} (slowest decays); "
        f"torch {torch.__version__}; default tiling",
        "",
        "| photo | size | PSNR(pruned fp32, full fp32) dB | PSNR(pruned bf16, full fp32) dB | PSNR(full bf16, full fp32) dB |",
        "|---|---|---:|---:|---:|",
    ]
    print("\n".join(head), flush=True)
    rows, per_photo, worst = [], [], {k: math.inf for k in COLUMNS}
    for f in files:
        img = read_photo(f).rgb  # (H, W, 3) float32 in [0, 1]
        ref = engines["full fp32"].restore(img)
        v = {k: psnr8(engines[k].restore(img), ref) for k in COLUMNS}
        worst = {k: min(worst[k], v[k]) for k in COLUMNS}
        name = f"{f.parent.name}/{f.name}"
        per_photo.append({"photo": name, **{k: db(x) for k, x in v.items()}})
        rows.append(f"| {name} | {img.shape[1]}x{img.shape[0]} | " + " | ".join(f"{v[k]:.2f}" for k in COLUMNS) + " |")
        print(rows[-1], flush=True)
    ok = worst["pruned fp32"] >= args.min_psnr and worst["pruned bf16"] >= args.min_psnr_bf16
    verdict = (f"Worst: pruned fp32 {worst['pruned fp32']:.2f} dB (rule >= {args.min_psnr:g}), pruned bf16 "
               f"{worst['pruned bf16']:.2f} dB (rule >= {args.min_psnr_bf16:g}), full bf16 "
               f"{worst['full bf16']:.2f} dB -> ")

    def report(outcome: str) -> None:
        print("\n" + verdict + outcome, flush=True)
        if args.report:
            with atomic_path(args.report) as tmp:
                tmp.write_text("\n".join([*head, *rows, "", verdict + outcome]) + "\n")

    if not ok:
        report("rules NOT met, nothing written.")
        return RULES_NOT_MET
    card = inherited_card(meta)
    card["note"] = (f"{src.name} pruned to {args.states} of its {N} SSM states (see 'pruned'; scores of these "
                    "weights under 'scores_real_dpdd' when measured). The source's note: " + str(card.get("note", "")))
    card["pruned"] = {
        "from": src.name,
        "from_sha256": src_sha256,
        "from_preset": meta.get("preset"),
        "states": f"{args.states} of {N} per SS2D, the slowest-decaying (cmddcli.model.prune)",
        "kept": kept,
        "rule": f"PSNR(pruned fp32, full fp32) >= {args.min_psnr:g} dB and PSNR(pruned bf16, full fp32) >= "
                f"{args.min_psnr_bf16:g} dB on every photo, 8-bit outputs",
        "worst_db": {k: db(x) for k, x in worst.items()},
        "per_photo_db": per_photo,
        "source_scores": {k: card.pop(k) for k in list(card) if k.startswith("scores_")},
    }
    if eval_sets:
        from dataclasses import asdict

        from cmddcli.eval.protocol import EvalSettings, evaluate_model

        settings = EvalSettings()
        engine = Deblurrer(model=pruned, device="cpu", precision=settings.precision, tile=settings.tile)
        card["scores_real_dpdd"] = {}
        for d, crop, items in eval_sets:
            summary = evaluate_model(engine, items, settings).summary
            card["scores_real_dpdd"][f"{Path(d).name} (crop top {crop})"] = [asdict(r) for r in summary]
            print(f"{Path(d).name}: {summary[-1].means}", flush=True)
    save_weights(pruned, args.out, metadata=card, dtype=STORAGE_DTYPES[args.dtype], preset=preset_of(pruned.config))
    report(f"rules met; wrote {args.out.name} ({args.out.stat().st_size / 1e6:.2f} MB).")
    return 0


if __name__ == "__main__":
    run_script(main)  # CmddError / OSError: one line, exit 1
