"""Halo check on validation pairs: how far outputs go beyond what the input and the target hold nearby.

    python scripts/halo_check.py --data DIR [--data DIR ...] --weights W [--weights W ...] [--window 9]
        [--out FILE.md]

Over-sharpening draws dark (and bright) rims along strong edges: output values darker than anything
in the neighbourhood, in the sharp target *and* in the blurred input. A correct restoration stays
within the target's local range, and blur stays within the input's (both up to noise), so for every
pixel we take the range [min, max] of the target and the input together over a ``--window`` square
(default 9 px) and measure how far the output's luma (Rec. 601, 8-bit levels) falls below it
("under", dark rims) or above it ("over", bright rims): :func:`cmddcli.eval.checks.halo_excursions`.
Reported per weights and set: the mean excursion in 8-bit levels over all pixels, and the share of
pixels more than 4 levels outside. ``scripts/ship_check.py`` measures the same beside the rule's
other clauses.

DIR is a folder of pairs as ``cmdd eval --data`` reads them (``source/``+``target/``,
``blur/``+``sharp/``...). Use validation pairs only (e.g. ../shared/samples/defocus/dpdd_1024, or
those inputs saved as JPEG); the test pairs and blurred_only/ are test-only. Whole images, fp32.
This is a diagnostic for the "no halos" target (training/README.md), not a protocol metric.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cmddcli.engine import Deblurrer
from cmddcli.errors import run_script
from cmddcli.eval.checks import halo_excursions, halo_share
from cmddcli.eval.protocol import gather_items, load_for_eval
from cmddcli.train.losses import check_window


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, help="validation pairs folder (repeatable)")
    ap.add_argument("--weights", action="append", required=True, help="weights file or packaged name (repeatable)")
    ap.add_argument("--window", type=int, default=9, help="neighbourhood side in px (odd, default 9)")
    ap.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = ap.parse_args()
    check_window(args.window, "--window")
    sets = [(d, gather_items(data=[d])) for d in args.data]
    lines = [f"Window {args.window} px; 8-bit luma levels beyond the local range of input and target; fp32, "
             "whole images.", "",
             "| weights | pairs | images | mean under | mean over | pixels > 4 under | pixels > 4 over |",
             "|---|---|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for w in args.weights:
        engine = Deblurrer(w, device="cpu", precision="fp32", tile=0)
        for d, items in sets:
            under, over = [], []
            for it in items:
                inp, tgt = load_for_eval(it.source), load_for_eval(it.target)
                out = engine.restore(inp.astype(np.float32)).astype(np.float64)
                u, o = halo_excursions(out, inp, tgt, args.window)
                under.append(u.ravel())
                over.append(o.ravel())
            u, o = np.concatenate(under), np.concatenate(over)
            su, so = halo_share(u, o)
            lines.append(f"| {Path(w).name} | {Path(d).name} | {len(items)} | {u.mean():.3f} | {o.mean():.3f} | "
                         f"{su:.3f} % | {so:.3f} % |")
            print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    run_script(main)  # CmddError / OSError: one line, exit 1
