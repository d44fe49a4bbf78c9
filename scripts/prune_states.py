"""Prune trained weights to fewer selective-scan states, checked on real photos before writing.

    python scripts/prune_states.py SRC OUT --states 4 [--min-psnr 60] [--report FILE.md] [--dtype fp16] \
        [--eval-data DIR[:CROP_TOP] ...]

SRC is a weights file or a packaged name (``v1``). :func:`cmddcli.model.prune.prune_states` keeps
the slowest-decaying ``--states`` states of every SS2D. Then the full and the pruned network run
through :class:`cmddcli.engine.Deblurrer` (default tiling) on every real defocused photo the bf16
check uses (benchmarks/bf16_check.py: ../shared/samples/defocus), and the script reports per photo
PSNR(pruned fp32 output, full fp32 output), PSNR(pruned bf16, full fp32) (what a CPU user gets)
and, for scale, PSNR(full bf16, full fp32), all on the 8-bit outputs. OUT is written only if the
pruned fp32 output is within ``--min-psnr`` dB of the full one on every photo (default 60 dB: no
more change than bf16 rounding itself makes, 61.9 dB at worst for v1) and the bf16 path still meets
issue 10's 50 dB rule (``--min-psnr-bf16``); otherwise it exits 1 and writes nothing. This is a numerical check that the
pruned network computes the same function, not a quality score: no photo's content chooses anything.

OUT keeps SRC's model card (absolute paths cut as scripts/package_default_weights.py does) and adds
``pruned``: source name and SHA-256, states kept per layer, the rule, the per-photo figures, and
the source's own scores (``source_scores``: they were measured on the unpruned network). With
``--eval-data`` the pruned network is scored on those pair sets by the ``cmdd eval`` protocol
(:mod:`cmddcli.eval.protocol`, whole images, fp32; ``:48`` is ``--crop-top 48``, the caption band
of ``dpdd_gif_pairs``) and the card records the summaries under
``scores_real_dpdd`` (one entry per set).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bf16_check import SAMPLES, photos, psnr8  # noqa: E402
from package_default_weights import portable  # noqa: E402  (scripts/ is on sys.path: this file's folder)

from cmddcli.engine import Deblurrer  # noqa: E402
from cmddcli.errors import CmddError  # noqa: E402
from cmddcli.model import PRESETS  # noqa: E402
from cmddcli.model.prune import prune_states  # noqa: E402
from cmddcli.model.weights import load_weights, resolve_weights, save_weights  # noqa: E402
from cmddcli.photo import read_photo  # noqa: E402

CARD_SKIP = {"format", "config", "preset", "version", "dtype"}  # save_weights writes these anew


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def preset_of(config) -> str | None:
    return next((name for name, (cfg, _) in PRESETS.items() if cfg == config), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="weights file or packaged name")
    ap.add_argument("out", type=Path)
    ap.add_argument("--states", type=int, required=True, help="SSM states to keep per layer")
    ap.add_argument("--min-psnr", type=float, default=60.0, help="pruned vs full fp32 output, every photo (dB)")
    ap.add_argument("--min-psnr-bf16", type=float, default=50.0,
                    help="pruned bf16 vs full fp32 output, every photo (dB; issue 10's bf16 rule)")
    ap.add_argument("--samples", type=Path, default=SAMPLES)
    ap.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    ap.add_argument("--report", type=Path, default=None, help="also write the table here (markdown)")
    ap.add_argument("--eval-data", nargs="*", default=[], help="pair sets to score the pruned weights on: cmdd eval --data DIR [--crop-top N] as DIR[:N]")
    args = ap.parse_args()

    src = resolve_weights(args.src)
    if args.out.resolve() == src.resolve():
        print(f"error: {args.out}: is the source weights file; write the pruned weights elsewhere", file=sys.stderr)
        return 1
    full, meta = load_weights(src)
    pruned, kept = prune_states(full, args.states)
    engines = {
        "full fp32": Deblurrer(model=full, device="cpu", precision="fp32"),
        "full bf16": Deblurrer(model=full, device="cpu", precision="bf16"),
        "pruned fp32": Deblurrer(model=pruned, device="cpu", precision="fp32"),
        "pruned bf16": Deblurrer(model=pruned, device="cpu", precision="bf16"),
    }
    files = photos(args.samples)
    if not files:
        print(f"error: no photos under {args.samples}", file=sys.stderr)
        return 1
    rows, per_photo = [], []
    for f in files:
        img = read_photo(f).rgb  # (H, W, 3) float32 in [0, 1]
        ref = engines["full fp32"].restore(img)
        v = {k: psnr8(e.restore(img), ref) for k, e in engines.items() if k != "full fp32"}
        name = f"{f.parent.name}/{f.name}"
        per_photo.append({"photo": name, **{k: round(x, 2) for k, x in v.items()}})
        rows.append(f"| {name} | {img.shape[1]}x{img.shape[0]} | {v['pruned fp32']:.2f} | {v['pruned bf16']:.2f} | "
                    f"{v['full bf16']:.2f} |")
        print(rows[-1], flush=True)
    worst = {k: min(p[k] for p in per_photo) for k in ("pruned fp32", "pruned bf16", "full bf16")}
    ok = worst["pruned fp32"] >= args.min_psnr and worst["pruned bf16"] >= args.min_psnr_bf16
    N = full.config.d_state
    verdict = (f"Worst: pruned fp32 {worst['pruned fp32']:.2f} dB (rule >= {args.min_psnr:g}), pruned bf16 "
               f"{worst['pruned bf16']:.2f} dB (rule >= {args.min_psnr_bf16:g}), full bf16 {worst['full bf16']:.2f} dB -> "
               + ("rules met, weights written." if ok else "rules NOT met, nothing written."))
    text = "\n".join([
        f"Source: {src.name} (SHA-256 {sha256(src)[:16]}…), {N} states -> {args.states} (slowest decays); "
        f"torch {torch.__version__}; default tiling",
        "",
        "| photo | size | PSNR(pruned fp32, full fp32) dB | PSNR(pruned bf16, full fp32) dB | PSNR(full bf16, full fp32) dB |",
        "|---|---|---:|---:|---:|",
        *rows,
        "",
        verdict,
    ])
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    if not ok:
        return 1
    card = portable({k: v for k, v in meta.items() if k not in CARD_SKIP})
    card["pruned"] = {
        "from": src.name,
        "from_sha256": sha256(src),
        "from_preset": meta.get("preset"),
        "states": f"{args.states} of {N} per SS2D, the slowest-decaying (cmddcli.model.prune)",
        "kept": kept,
        "rule": f"PSNR(pruned fp32, full fp32) >= {args.min_psnr:g} dB and PSNR(pruned bf16, full fp32) >= "
                f"{args.min_psnr_bf16:g} dB on every photo, 8-bit outputs",
        "worst_db": {k: round(x, 2) for k, x in worst.items()},
        "per_photo_db": per_photo,
        "source_scores": {k: card.pop(k) for k in list(card) if k.startswith("scores_")},
    }
    if args.eval_data:
        from dataclasses import asdict

        from cmddcli.eval.protocol import EvalSettings, evaluate_model, gather_items

        settings = EvalSettings()
        engine = Deblurrer(model=pruned, device="cpu", precision=settings.precision, tile=settings.tile)
        card["scores_real_dpdd"] = {}
        for spec in args.eval_data:
            d, _, crop = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "0")
            report = evaluate_model(engine, gather_items(data=[d], crop_top=[int(crop)]), settings)
            card["scores_real_dpdd"][f"{Path(d).name} (crop top {crop})"] = [asdict(r) for r in report.summary]
            print(Path(d).name, report.summary[-1].means, flush=True)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[args.dtype]
    save_weights(pruned, args.out, metadata=card, dtype=dtype, preset=preset_of(pruned.config))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CmddError as e:  # weights not found or unreadable, bad --states, a model without SS2D, ...
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
