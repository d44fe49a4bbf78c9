"""Package a trained run's weights as the default weights shipped inside cmddcli, with a model card.

    python scripts/package_default_weights.py RUN_WEIGHTS.safetensors [--manifest TRAIN_MANIFEST] \
        --eval EVAL_DIR/summary.json [--eval-test TEST_EVAL/summary.json] --note "..." [--dtype fp16] [--out PATH] \
        [--parent WEIGHTS] [--cpu-hours H] [--antiring W,M]

RUN_WEIGHTS comes from `scripts/export_checkpoint.py` (its metadata carries the run's config). A run on
a prepared dataset names its manifest (`--manifest`); a run on on-the-fly synthesis (`data.kind =
"synth"`) needs none: the synthesis preset, sharp sources and held-out validation recipe are read from
the run's config.

The metadata header records the preset, iterations, data sources and their licences, the synthesis
settings, the date and the scores on the real DPDD pairs (means, and per image from the `per_image.csv`
that `cmdd eval --out` writes beside `summary.json`), and `cmdd info` prints it. A run that started from
other weights (`init_weights`) names them with `--parent`: the card then carries the parent's name,
SHA-256, preset, steps, CPU hours and note under "fine_tuned_from" (and the parent's own parent, so the
whole lineage). `--cpu-hours` is this run's training time on the CPU (wall hours x cores used). `--antiring W,M` names
the anti-ringing clamp (cmddcli.engine.antiring) that every engine loading these weights applies.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import torch

from cmddcli.fileutil import sha256_file
from cmddcli.fileutil import finite_json
from cmddcli.data.real_pairs import real_pairs_from
from cmddcli.engine.antiring import AntiRing, parse_antiring
from cmddcli.errors import CmddError
from cmddcli.model.weights import default_weights_path, load_weights, read_metadata, resolve_weights, save_weights

SOURCES = (  # what scripts/fetch_sharp_sources.sh fetches; per-file credits in docs/synthetic_defocus.md
    "sharp photos from Debian packages lomiri-wallpapers-16.04 (CC-BY-4.0 / CC-BY-SA-4.0 / CC0), "
    "mate-backgrounds (GPL-2+), opencv-doc examples/data (Apache-2.0 AND BSD-3-Clause), tuxpaint-data "
    "templates (GPL-2+), sddm-theme-maldives (CC-BY-3.0), octave-vlfeat data (BSD-2-Clause), the wheels "
    "of scikit-learn 1.5.2 (china.jpg, CC-BY-2.0), matplotlib 3.9.2 (grace_hopper.jpg, public domain) "
    "and scipy 1.9.3 (face, public domain), and the scikit-image 0.26 wheel (public domain / CC0); "
    "per-file credits in docs/synthetic_defocus.md"
)


# per_image.csv columns kept on the card: the model's scores, the colour-fair PSNR, the input's and the gains
PER_IMAGE_COLUMNS = ("psnr", "ssim", "mae", "psnr_cf", "input_psnr", "input_psnr_cf", "gain_psnr", "gain_psnr_cf")

# --dtype: how the weights are stored (None: as trained, float32).
STORAGE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def portable(value):
    """``value`` with every absolute path cut to its last part (``…/sharp_src``): the model card names
    no folder of the machine that trained it."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and value.startswith("/") and len(value) > 1:
        return "…/" + Path(value).name
    return value


def lineage(parent: str) -> dict:
    """The card entry for the weights a run started from: name, SHA-256, preset, steps, CPU hours, note,
    and, nested, their own parent's entry."""
    path = resolve_weights(parent)
    meta = read_metadata(path)
    steps = meta.get("iterations") or (meta.get("train") or {}).get("step")  # a packaged card or an export
    entry = {"name": path.name, "sha256": sha256_file(path), "preset": meta.get("preset"),
             "iterations": steps, "cpu_hours": meta.get("cpu_hours"), "note": meta.get("note", "")}
    if "fine_tuned_from" in meta:
        entry["fine_tuned_from"] = meta["fine_tuned_from"]
    if "pruned" in meta:
        entry["pruned_from"] = {k: meta["pruned"].get(k) for k in ("from", "from_sha256", "from_preset", "states")}
    return entry


REAL_DPDD = (
    "real DPDD pairs (Abuolaim & Brown, ECCV 2020; Canon EOS 5D Mark IV, f/4 input, f/22 target; the DPDD "
    "repository is MIT-licensed) as copied to ../shared/samples/defocus/dpdd_train/ from RUA1027/Defocus_with_NewBP "
    "@ c89c017 (no licence of its own): DPDD *test_c* scenes resized by that uploader to 1024x1024, so a model "
    "trained on them must never be compared with published DPDD test-set numbers"
)


def synth_run_data(data: dict, target_align: str = "none") -> tuple[str, dict]:
    """(training-data sentence, synthesis record) for a run on on-the-fly synthesis (``data.kind =
    "synth"``), with its real pairs when ``data.mix > 0`` (share, aspect, registration, crop bias, and
    the run's ``target_align``)."""
    mix = float(data.get("mix") or 0.0)
    synth = ("on-the-fly synthetic defocus (a new blur every step) from the sharp 256-px tiles of the photographs "
             f"scripts/fetch_sharp_sources.sh fetches: {SOURCES}")
    if data.get("val_sharp"):
        synth += "; the scikit-image photographs held out for validation"
    synthesis = {"preset": data.get("synth"), "validation": data.get("val_synth")}
    if mix <= 0:
        return synth, synthesis
    n = len(real_pairs_from(data["real_path"])) if data.get("real_path") and Path(data["real_path"]).is_dir() else None
    real = (f"{n or 'the'} {REAL_DPDD}; {round(100 * mix)} % of the training samples are crops of them (aspect "
            f"{data.get('real_aspect', 'as_is')}, registration {data.get('real_register', 'none')}, blur-preferring "
            f"crops with chance {data.get('real_blur_bias')}, target_align {target_align})")
    synthesis["real_pairs"] = {"share": mix, "pairs": n, "aspect": data.get("real_aspect", "as_is"),
                               "register": data.get("real_register", "none"), "target_align": target_align}
    return (real if mix >= 1 else f"{real}; the rest {synth}"), synthesis


def per_image(summary_json: Path) -> list | None:
    """Rows of the ``per_image.csv`` that ``cmdd eval --out`` writes beside ``summary.json`` (None if absent)."""
    import csv

    f = summary_json.with_name("per_image.csv")
    if not f.exists():
        return None
    rows = []
    with open(f, newline="") as fh:
        for r in csv.DictReader(fh):
            rows.append({"name": r["name"], **{m: float(r[m]) for m in PER_IMAGE_COLUMNS if r.get(m)}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", type=Path)
    ap.add_argument("--manifest", type=Path, help="the synthetic training manifest (runs on a prepared dataset)")
    ap.add_argument("--eval", type=Path, help="cmdd eval summary.json on the real DPDD pairs (validation pairs)")
    ap.add_argument("--eval-test", type=Path, help="cmdd eval summary.json on the test pairs, reported separately")
    ap.add_argument("--note", default="")
    ap.add_argument("--dtype", choices=list(STORAGE_DTYPES), default="fp16")
    ap.add_argument("--out", type=Path, default=default_weights_path())
    ap.add_argument("--parent", help="the weights the run started from (file or packaged name): recorded with its "
                                     "own lineage under fine_tuned_from")
    ap.add_argument("--cpu-hours", type=float, help="this run's CPU training time, hours (wall hours x cores)")
    ap.add_argument("--antiring", metavar="W,M", help="the anti-ringing clamp the card names (window px, margin "
                                                       "8-bit levels; cmddcli.engine.antiring): engines apply it")
    args = ap.parse_args()
    try:
        ring = parse_antiring(args.antiring) if args.antiring else None
    except CmddError as e:
        raise SystemExit(f"error: {e}") from None
    if args.antiring and not isinstance(ring, AntiRing):
        raise SystemExit(f"error: --antiring must be WINDOW,MARGIN (e.g. 11,4), got {args.antiring!r}")
    net, meta = load_weights(args.weights)
    train = portable(meta.get("train", {}))
    data = (train.get("config") or {}).get("data", {})
    if args.manifest is not None:
        man = json.loads(args.manifest.read_text())
        training_data = f"synthetic defocus ({man.get('counts')}) made by `cmdd prepare synth`; {SOURCES}"
        synthesis = man.get("params", {}).get("synth")
    elif data.get("kind") == "synth":
        training_data, synthesis = synth_run_data(data, (train.get("config") or {}).get("target_align", "none"))
    else:
        raise SystemExit(f"{args.weights}: no --manifest and the run's config has no on-the-fly synthesis")
    card = {
        "preset": meta.get("preset"),
        "iterations": train.get("step"),
        "trained_with": train,
        "training_data": training_data,
        "synthesis": synthesis,
        "date": dt.date.today().isoformat(),
        "note": args.note,
    }
    if args.cpu_hours is not None:
        card["cpu_hours"] = args.cpu_hours
    if args.parent:
        card["fine_tuned_from"] = lineage(args.parent)
    if ring is not None:
        card["antiring"] = ring.to_card()

    def scores(path: Path):
        summary = json.loads(path.read_text())
        return summary.get("summary") or summary.get("overall") or summary

    if args.eval:
        key = "scores_real_dpdd_validation" if args.eval_test else "scores_real_dpdd_10_pairs"
        card[key] = scores(args.eval)
        if (rows := per_image(args.eval)) is not None:
            card[key + "_per_image"] = rows
    if args.eval_test:
        card["scores_real_dpdd_test"] = scores(args.eval_test)
        if (rows := per_image(args.eval_test)) is not None:
            card["scores_real_dpdd_test_per_image"] = rows
    card = finite_json(card)
    save_weights(net, args.out, metadata=card, dtype=STORAGE_DTYPES[args.dtype], preset=meta.get("preset"))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
