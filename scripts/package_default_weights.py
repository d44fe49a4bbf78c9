"""Package a trained run's weights as the default weights shipped inside cmddcli, with a model card.

    python scripts/package_default_weights.py RUN_WEIGHTS.safetensors --manifest TRAIN_MANIFEST \
        --eval EVAL_DIR/summary.json --note "..." [--dtype fp16]

The metadata header records the preset, iterations, data sources and their licences, the synthesis
settings, the date and the scores on the real DPDD pairs, and `cmdd info` prints it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import torch

from cmddcli.model.weights import default_weights_path, load_weights, save_weights

SOURCES = (
    "sharp photos from Debian packages lomiri-wallpapers-16.04 (CC-BY-4.0 / CC-BY-SA-4.0 / CC0), "
    "mate-backgrounds (GPL-2+), opencv-doc examples/data (Apache-2.0 AND BSD-3-Clause) and the "
    "scikit-image 0.26 wheel (public domain / CC0); per-file credits in docs/synthetic_defocus.md"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", type=Path)
    ap.add_argument("--manifest", type=Path, required=True, help="the synthetic training manifest")
    ap.add_argument("--eval", type=Path, help="cmdd eval summary.json on the real DPDD pairs")
    ap.add_argument("--note", default="")
    ap.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    ap.add_argument("--out", type=Path, default=default_weights_path())
    args = ap.parse_args()
    net, meta = load_weights(args.weights)
    man = json.loads(args.manifest.read_text())
    card = {
        "preset": meta.get("preset"),
        "iterations": meta.get("train", {}).get("step"),
        "trained_with": meta.get("train"),
        "training_data": f"synthetic defocus ({man.get('counts')}) made by `cmdd prepare synth`; {SOURCES}",
        "synthesis": man.get("params", {}).get("synth"),
        "date": dt.date.today().isoformat(),
        "note": args.note,
    }
    if args.eval:
        summary = json.loads(args.eval.read_text())
        card["scores_real_dpdd_10_pairs"] = summary.get("summary") or summary.get("overall") or summary
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[args.dtype]
    save_weights(net, args.out, metadata=card, dtype=dtype, preset=meta.get("preset"))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
