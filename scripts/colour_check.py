"""Colour check: does deblurring move a photo's colours? Per-channel mean shift, output minus input.

    python scripts/colour_check.py IN_DIR OUT_DIR [OUT_DIR ...] [--max-cast 1.0] [--block 32] [--out FILE.md]

Deblurring should sharpen, not recolour. For every photo of IN_DIR and its output in each OUT_DIR
(matched by stem, as `cmdd deblur IN_DIR -o OUT_DIR` names them) this prints, in 8-bit levels (0..255
whatever the bit depth): the mean difference of each channel (R, G, B) over the whole photo; the
**colour cast**, how far those three shifts differ from one another (max - min); and, as a local
view, the largest shift of any ``--block``² block's channel mean.

The rule (the colour clause of training/v3/README.md) is on the cast: under ``--max-cast`` levels
(default 1.0) on every photo. An equal shift of all three channels is a change of brightness, and a
correct deblur makes one: defocus averages light (linear values), and the sRGB curve is concave, so
a blurred photo's 8-bit mean is higher than its sharp one's wherever there is contrast (Jensen's
inequality). Measured: on 24 synthetic pairs (`cmdd prepare synth` from the scikit-image photographs,
blur in linear light) every sharp target is 0.6-7.3 levels darker than its blurred input, per channel;
on `blurred_only/` v1 darkens by up to 1.3 levels and v2 by up to 2.2, each channel alike (cast
<= 0.07). So brightness is reported, not ruled on.

Photos are read with cmdd's own reader (EXIF orientation applied, 16-bit kept), so a RAW or TIFF
output is compared with its input as cmdd sees both. Exit status: 0 within the rule; 3 a photo over
it; 1 an error (one line).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cmddcli.atomic import atomic_path
from cmddcli.errors import InputError, run_script
from cmddcli.eval.checks import channel_shift
from cmddcli.photo import read_photo

RULE_BROKEN = 3


def _by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", type=Path)
    ap.add_argument("outputs", type=Path, nargs="+", help="output folders of cmdd deblur, one per model")
    ap.add_argument("--max-cast", type=float, default=1.0,
                    help="largest allowed colour cast (spread of the per-channel mean shifts), 8-bit levels")
    ap.add_argument("--block", type=int, default=32, help="block side (px) of the local figure")
    ap.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = ap.parse_args()
    for folder in (args.inputs, *args.outputs):
        if not folder.is_dir():
            raise InputError(folder, "not a folder")
    ins = _by_stem(args.inputs)
    if not ins:
        raise InputError(args.inputs, "holds no photos")
    rows = ["| photo | outputs | mean shift R / G / B (levels) | brightness | colour cast | largest block shift |",
            "|---|---|---|---:|---:|---:|"]
    outputs = [(folder, _by_stem(folder)) for folder in args.outputs]
    worst = 0.0
    for stem, src in ins.items():
        inp = read_photo(src).rgb  # once per photo, whatever the number of output folders
        for folder, outs in outputs:
            if stem not in outs:
                raise InputError(folder / stem, f"no output for {src.name}")
            out = read_photo(outs[stem]).rgb
            try:
                whole, local = channel_shift(out, inp, args.block)
            except ValueError as e:
                raise InputError(outs[stem], str(e)) from None
            cast = float(np.ptp(whole))
            worst = max(worst, cast)
            rows.append(f"| {src.name} | {folder.name} | {' / '.join(f'{v:+.2f}' for v in whole)} | "
                        f"{whole.mean():+.2f} | {cast:.2f} | {local:.2f} |")
            print(rows[-1], flush=True)
    ok = worst < args.max_cast
    verdict = f"Largest colour cast: {worst:.2f} levels (rule < {args.max_cast:g}): {'met' if ok else 'NOT met'}."
    print("\n" + verdict)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text("\n".join(rows + ["", verdict]) + "\n")
    return 0 if ok else RULE_BROKEN


if __name__ == "__main__":
    run_script(main)
