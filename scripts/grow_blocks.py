"""Grow trained weights to more blocks per stage (a deeper preset) or to a multiple of their width
(a wider preset), computing the same function.

    python scripts/grow_blocks.py SRC OUT --preset cpu-deep [--dtype fp32] [--max-diff 1e-5] [--seed 0]
                                  [--norm-weight 0.1]

SRC is a weights file or a packaged name (v1, v2, default). cmddcli.model.grow.grow_blocks copies
every trained tensor into the network of --preset (which may differ from SRC's configuration only
in its block counts, each at least SRC's) and starts each new block as the identity (its other
tensors drawn from PyTorch's usual initialisation under --seed, so OUT is reproducible). Before
writing, source and grown network run on the same seeded random batch (2 x 3 x 96 x 104, eval and
training mode); OUT is written only if the outputs differ by at most --max-diff (default 1e-5, float
rounding). Use OUT as a run's init_weights with the same model preset, e.g.

    cmdd train --config training/v3_mix.toml --set model.preset=cpu-deep --set init_weights=OUT ...

When --preset differs from SRC only in width, an integer multiple of SRC's (e.g. the default weights,
width 16, to cpu-w32), cmddcli.model.grow.widen copies every channel that many times and splits the
weights that sum over them (Net2WiderNet; --seed draws the split shares); the check is the same.

--norm-weight W > 0 starts the new blocks' LayerNorm weight at W instead of 0 (near-identity, so that
the new blocks train from the first step; cmddcli.model.grow): the difference is then measured and
recorded but not held to --max-diff; measure the start's validation score before training.

OUT keeps SRC's model card (absolute paths cut) and adds "grown": source name and SHA-256, source
preset, block counts before and after, and the measured difference. Exit status: 0 written; 1 an
error (one line on stderr; nothing written); 3 the outputs differ by more than --max-diff.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
from pathlib import Path

import torch

from cmddcli.atomic import check_writable
from cmddcli.errors import CmddError, run_script
from cmddcli.fileutil import sha256_file
from cmddcli.model import PRESETS
from cmddcli.model.grow import grow_blocks, widen
from cmddcli.model.weights import load_weights, resolve_weights, save_weights

_spec = importlib.util.spec_from_file_location("prune_states", Path(__file__).with_name("prune_states.py"))
_prune = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_prune)
STORAGE_DTYPES, preset_of, RULES_NOT_MET = _prune.STORAGE_DTYPES, _prune.preset_of, _prune.RULES_NOT_MET


def max_difference(a: torch.nn.Module, b: torch.nn.Module, seed: int = 0) -> float:
    """Largest |a(x) - b(x)| over a seeded random batch (2, 3, 96, 104) in [0, 1], taken in eval
    mode and in training mode (BatchNorm on batch statistics). Runs on copies: a training-mode
    forward updates BatchNorm's running statistics, which must not reach the weights written."""
    x = torch.rand(2, 3, 96, 104, generator=torch.Generator().manual_seed(seed))
    worst = 0.0
    with torch.no_grad():
        for training in (False, True):
            ca, cb = copy.deepcopy(a).train(training), copy.deepcopy(b).train(training)
            worst = max(worst, float((ca(x) - cb(x)).abs().max()))
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="weights file or packaged name (v1, v2)")
    ap.add_argument("out", type=Path, help="grown weights file to write (.safetensors; not SRC)")
    ap.add_argument("--preset", required=True, choices=list(PRESETS), help="model preset to grow into (e.g. cpu-deep)")
    ap.add_argument("--dtype", choices=list(STORAGE_DTYPES), default="fp32", help="storage type of OUT (default fp32)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the new blocks' initialisation (default 0)")
    ap.add_argument("--max-diff", type=float, default=1e-5,
                    help="largest output difference allowed with --norm-weight 0 (default 1e-5)")
    ap.add_argument("--norm-weight", type=float, default=0.0,
                    help="new blocks' LayerNorm weight at the start (default 0: exactly the identity)")
    args = ap.parse_args()

    src = resolve_weights(args.src)
    _prune.check_out_path(src, args.out, "grown")
    full, meta = load_weights(src)
    full = full.float()
    target = PRESETS[args.preset][0]
    src_cfg = full.config.to_dict()
    other = [f for f, v in target.to_dict().items() if f not in ("blocks", "width") and v != src_cfg[f]]
    wider = target.width != full.config.width
    if other or (wider and target.blocks != full.config.blocks):
        what = ", ".join(other) or "both width and block counts"
        raise CmddError(f"{src.name}: preset {args.preset} differs from these weights in more than block counts "
                        f"or width ({what}); growth changes one of the two")
    if wider and target.width % full.config.width:
        raise CmddError(f"{src.name}: width {full.config.width} -> {target.width} is not an integer multiple; "
                        "width growth copies every channel the same number of times")
    if wider and args.norm_weight:
        raise CmddError("--norm-weight applies to new blocks; width growth adds none (leave it out)")
    factor = target.width // full.config.width
    torch.manual_seed(args.seed)
    if wider:
        grown = widen(full, factor, seed=args.seed)
    else:
        grown = grow_blocks(full, target.blocks, norm_weight=args.norm_weight)
    check_writable(args.out, "grown weights file")
    diff = max_difference(full, grown)
    exact = args.norm_weight == 0.0 or wider
    rule = f"rule <= {args.max_diff:g}" if exact else f"near-identity, LayerNorm weight {args.norm_weight:g}: not held to a rule"
    size = (f"width {full.config.width} -> {target.width}" if wider
            else f"{list(full.config.blocks)} -> {list(target.blocks)}")
    print(f"{src.name} -> {args.preset}, {size}: largest output difference {diff:.3g} ({rule})", flush=True)
    if exact and diff > args.max_diff:
        print("rule NOT met, nothing written.", flush=True)
        return RULES_NOT_MET
    card = _prune.inherited_card(meta)
    if wider:
        what = f"every channel copied {factor} times, summed weights split"
        method = f"cmddcli.model.grow.widen (Net2WiderNet): {what}, the same function at the start"
    else:
        start = "the identity" if exact else f"near the identity (LayerNorm weight {args.norm_weight:g})"
        what = f"new blocks start as {start}"
        method = f"cmddcli.model.grow.grow_blocks: trained blocks copied, new blocks {start} at the start"
    card["note"] = (f"{src.name} grown to {args.preset} ({what}; see 'grown'). "
                    "The source's note: " + str(card.get("note", "")))
    card["grown"] = {
        "from": src.name,
        "from_sha256": sha256_file(src),
        "from_preset": meta.get("preset"),
        "blocks": {"from": list(full.config.blocks), "to": list(target.blocks)},
        "width": {"from": full.config.width, "to": target.width},
        "method": method,
        "norm_weight": 0.0 if wider else args.norm_weight,
        "seed": args.seed,
        "max_output_difference": diff,
        "source_scores": {k: card.pop(k) for k in list(card) if k.startswith("scores_")},
    }
    save_weights(grown, args.out, metadata=card, dtype=STORAGE_DTYPES[args.dtype], preset=preset_of(grown.config))
    print(f"wrote {args.out.name} ({args.out.stat().st_size / 1e6:.2f} MB).", flush=True)
    return 0


if __name__ == "__main__":
    run_script(main)  # CmddError / OSError: one line, exit 1
