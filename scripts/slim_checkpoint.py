"""Shrink a training checkpoint to what is needed to continue it later (fp16 weights and EMA,
step, configs, data position, RNG, best score; no optimizer state): see
:func:`cmddcli.train.checkpoint.slim_checkpoint` and training/README.md.

    python scripts/slim_checkpoint.py runs/default_v2 training/default_v2/checkpoint.pt [--drop-ema]

``--drop-ema`` also leaves out the EMA weights (half the size: the EMA restarts from the weights
when the run resumes), for keeping the repository small when the raw weights are the ones chosen.
"""

from __future__ import annotations

import argparse
from pathlib import Path


from cmddcli.train.checkpoint import slim_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="checkpoint file or run folder")
    ap.add_argument("dst", type=Path)
    ap.add_argument("--drop-ema", action="store_true", help="leave out the EMA weights too")
    args = ap.parse_args()
    ck = slim_checkpoint(args.src, args.dst, keep_ema=not args.drop_ema)
    print(f"{ck['slim']['from']} (step {ck['step']}) -> {args.dst} ({args.dst.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
