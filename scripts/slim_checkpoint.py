"""Shrink a training checkpoint to what a later session needs to continue: fp16 weights and EMA,
step, configs, data position, RNG and best score; the optimizer state is dropped.

    python scripts/slim_checkpoint.py runs/default_v2 training/default_v2/checkpoint.pt

A full `small` checkpoint is ~28 MB (fp32 weights, EMA and two Adam moments); the slim one is ~7 MB,
so one can be committed per working session without the repository growing past its budget.
``cmdd train --resume FILE`` accepts it: Adam's moments restart from zero (logged), everything else
continues exactly. SRC may be a checkpoint file or a run folder (its newest checkpoint).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmddcli.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from cmddcli.train.loop import ResumePoint  # noqa: E402


def _half(state: dict | None) -> dict | None:
    if state is None:
        return None
    return {k: (v.half() if torch.is_floating_point(v) else v) for k, v in state.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="checkpoint file or run folder")
    ap.add_argument("dst", type=Path)
    args = ap.parse_args()
    src = Path(args.src)
    path = ResumePoint.find(src).path if src.is_dir() else src
    ck = load_checkpoint(path)
    ck["model"] = _half(ck["model"])
    ck["ema"] = _half(ck.get("ema"))
    ck["optimizer"] = None
    ck["slim"] = {"from": str(path), "dropped": ["optimizer"], "weights_dtype": "float16"}
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.dst, ck)
    print(f"{path} (step {ck['step']}) -> {args.dst} ({args.dst.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
