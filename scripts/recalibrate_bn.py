"""Precise BatchNorm for trained weights: running statistics averaged over many training batches.

    python scripts/recalibrate_bn.py WEIGHTS OUT (--config training/v3_mix.toml | --preset tiny)
        [--set key=value ...] [--batches 200] [--seed 1234] [--dtype fp32]

WEIGHTS is a weights file or a packaged name (v1, v2, default). The batches come from the training
data that --config or --preset (and --set, as for cmdd train) describes: its first stage's patch and batch size,
its real / synthetic mix, in the order of a sample stream seeded with --seed (keep it apart from the
run's seed). cmddcli.train.precise_bn.recalibrate_batchnorm replaces every BatchNorm layer's running
mean and variance by their average over --batches batches; no other tensor changes. OUT keeps the
card of WEIGHTS (absolute paths cut) and adds "batchnorm_recalibrated": batches, seed, patch, batch,
the data (kind, mix, paths cut) and the source's name and SHA-256.

Exit status: 0 written; 1 an error (one line on stderr; nothing written).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

from cmddcli.atomic import check_writable
from cmddcli.errors import CmddError, run_script
from cmddcli.fileutil import sha256_file
from cmddcli.model.weights import load_weights, resolve_weights, save_weights
from cmddcli.train.overrides import build_config
from cmddcli.train.precise_bn import recalibrate_batchnorm, training_batches

_spec = importlib.util.spec_from_file_location("prune_states", Path(__file__).with_name("prune_states.py"))
_prune = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_prune)
STORAGE_DTYPES, portable, preset_of = _prune.STORAGE_DTYPES, _prune.portable, _prune.preset_of


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", help="weights file or packaged name (v1, v2, default)")
    ap.add_argument("out", type=Path, help="weights file to write (.safetensors; not WEIGHTS)")
    ap.add_argument("--config", type=Path, default=None, help="training config whose data the batches come from")
    ap.add_argument("--preset", default=None, help="training preset instead of --config (paper, tiny)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, as cmdd train --set (repeatable)")
    ap.add_argument("--batches", type=int, default=200, help="batches to average over (default 200)")
    ap.add_argument("--seed", type=int, default=1234, help="seed of the batch stream (default 1234)")
    ap.add_argument("--dtype", choices=list(STORAGE_DTYPES), default="fp32", help="storage type of OUT (default fp32)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    src = resolve_weights(args.weights)
    _prune.check_out_path(src, args.out, "recalibrated")
    if args.config is None and args.preset is None:
        raise CmddError("name the training data: --config FILE or --preset NAME")
    cfg = build_config(config=args.config, preset=args.preset, overrides=args.sets)
    model, meta = load_weights(src)
    model = model.float()
    check_writable(args.out, "weights file")
    recalibrate_batchnorm(model, training_batches(cfg, args.seed), args.batches)
    card = _prune.inherited_card(meta)
    card["batchnorm_recalibrated"] = {
        "from": src.name,
        "from_sha256": sha256_file(src),
        "batches": args.batches,
        "seed": args.seed,
        "patch": cfg.stages.patch[0],
        "batch": cfg.stages.batch[0],
        "data": portable({"kind": cfg.data.kind, "path": cfg.data.path, "real_path": cfg.data.real_path,
                          "mix": cfg.data.mix, "synth": cfg.data.synth}),
        "method": "cmddcli.train.precise_bn.recalibrate_batchnorm (cumulative average of batch statistics)",
    }
    save_weights(model, args.out, metadata=card, dtype=STORAGE_DTYPES[args.dtype], preset=preset_of(model.config))
    print(f"wrote {args.out.name}: BatchNorm statistics over {args.batches} batches of "
          f"{cfg.stages.batch[0]} x {cfg.stages.patch[0]}²", flush=True)
    return 0


if __name__ == "__main__":
    run_script(main)  # CmddError / OSError: one line, exit 1
