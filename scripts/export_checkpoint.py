"""Export the EMA (or raw) weights of a training checkpoint as a safetensors file for
``cmdd deblur --weights`` / ``cmdd eval --weights``.

    python scripts/export_checkpoint.py runs/default_v2 runs/default_v2/weights/step_ema.safetensors [--raw]

SRC may be a checkpoint file or a run folder (its newest checkpoint). The metadata records the run's
name, step and training config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmddcli.model import CMDDNet, ModelConfig  # noqa: E402
from cmddcli.model.weights import save_weights  # noqa: E402
from cmddcli.train.checkpoint import find_checkpoint, load_checkpoint  # noqa: E402


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
    meta = {"train": {"name": tc.get("name"), "step": ck["step"], "iters": tc.get("iters"), "ema": which == "ema",
                      "checkpoint": str(path), "config": tc}}
    save_weights(net, args.dst, metadata=meta, preset=tc.get("model", {}).get("preset"))
    print(f"{path} step {ck['step']} ({which}) -> {args.dst}")


if __name__ == "__main__":
    main()
