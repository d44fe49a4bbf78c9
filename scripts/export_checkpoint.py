"""Export the EMA (or raw) weights of a training checkpoint as a safetensors file for
``cmdd deblur --weights`` / ``cmdd eval --weights``; with several checkpoints, their uniform average.

    python scripts/export_checkpoint.py runs/default_v2 runs/default_v2/weights/step_ema.safetensors [--raw]
    python scripts/export_checkpoint.py runs/v3u/checkpoints/step_0000{0600,0650,...}.pt avg.safetensors

SRC may be a checkpoint file or a run folder (its newest checkpoint). The metadata records the run's
name, step and training config. Several SRC (checkpoints of one network) are averaged weight by weight
(stochastic weight averaging, :func:`cmddcli.train.checkpoint.average_states`); the metadata then
records the last one's step and config and every checkpoint averaged, under ``train.averaged``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cmddcli.model import CMDDNet, ModelConfig
from cmddcli.errors import CmddError, run_script
from cmddcli.train.checkpoint import average_states, export_weights, find_checkpoint, load_checkpoint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="+", help="checkpoint file(s) or run folder(s); several are averaged")
    ap.add_argument("dst", type=Path)
    ap.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA")
    args = ap.parse_args()
    paths = [find_checkpoint(Path(s)) if Path(s).is_dir() else Path(s) for s in args.src]
    states, whiches = [], []
    for path in paths:
        ck = load_checkpoint(path)
        which = "model" if args.raw or ck.get("ema") is None else "ema"
        states.append({k: v.float() if v.is_floating_point() else v for k, v in ck[which].items()})
        whiches.append(which)
    if len(set(whiches)) > 1:
        raise CmddError("some checkpoints hold EMA weights and some do not: pass --raw to average the raw weights")
    net = CMDDNet(ModelConfig.from_dict(ck["model_config"]))
    net.load_state_dict(states[0] if len(states) == 1 else average_states(states), strict=True)
    tc = ck["train_config"]
    extra = {"checkpoint": str(paths[-1]), "config": tc}
    if len(paths) > 1:
        extra["averaged"] = [str(p) for p in paths]
    export_weights(net, args.dst, tc, ck["step"], ema=which == "ema", train_extra=extra)
    what = f"mean of {len(paths)} checkpoints, last " if len(paths) > 1 else ""
    print(f"{what}{paths[-1]} step {ck['step']} ({which}) -> {args.dst}")
    return 0


if __name__ == "__main__":
    run_script(main)  # CmddError / OSError: one line, exit 1
