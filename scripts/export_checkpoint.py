"""Export the EMA (or raw) weights of a training checkpoint as a safetensors file for
``cmdd deblur --weights`` / ``cmdd eval --weights``.

    python scripts/export_checkpoint.py runs/default_v2 runs/default_v2/weights/step_ema.safetensors [--raw]

SRC may be a checkpoint file or a run folder (its newest checkpoint). The metadata records the run's
name, step and training config.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cmddcli.model import CMDDNet, ModelConfig
from cmddcli.train.checkpoint import export_weights, find_checkpoint, load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst", type=Path)
    ap.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA")
    args = ap.parse_args()
    src = Path(args.src)
    path = find_checkpoint(src) if src.is_dir() else src
    ck = load_checkpoint(path)
    which = "model" if args.raw or ck.get("ema") is None else "ema"
    net = CMDDNet(ModelConfig.from_dict(ck["model_config"]))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck[which].items()}, strict=True)
    tc = ck["train_config"]
    export_weights(net, args.dst, tc, ck["step"], ema=which == "ema", train_extra={"checkpoint": str(path), "config": tc})
    print(f"{path} step {ck['step']} ({which}) -> {args.dst}")


if __name__ == "__main__":
    main()
