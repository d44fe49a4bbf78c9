"""Degraded copies of validation pairs: the blurred inputs as JPEG, or inputs and targets as GIF frames.

    python scripts/degrade_val.py DATA OUT --jpeg 60            # inputs saved as JPEG quality 60
    python scripts/degrade_val.py DATA OUT --gif 256 [--dither] # inputs and targets as 256-colour GIF frames

DATA is a folder of pairs as ``cmdd eval --data`` reads them (``source/``+``target/``, ``blur/``+``sharp/``
...); OUT gets ``source/`` and ``target/`` with the same file stems, ready for ``cmdd eval --data OUT``.

- ``--jpeg Q``: each input written as an 8-bit JPEG file by the synthesiser's ``encode_jpeg`` (Pillow,
  quality Q, 4:2:0; what ``jpeg_roundtrip`` decodes), the target copied as 8-bit
  PNG. A proxy for web photos ("JPEG-60 validation").
- ``--gif N``: input *and* target each mapped onto a palette of N colours (Pillow's median cut of the
  image itself, one per image; ``--dither``: Floyd-Steinberg error diffusion, else about the nearest
  colour) with the synthesiser's ``palette_roundtrip``, and written as 8-bit PNG (lossless). A proxy
  for the DPDD pairs published as GIF animations (``dpdd_gif_pairs``: inputs and targets both went
  through a palette; their encoder is not known).

Use validation pairs only (../shared/samples/defocus/dpdd_1024, or the ``val`` split of a DPDD tree or
manifest: ``--split``, default ``val``; ``test`` is refused); the test pairs and blurred_only/ are
test-only. OUT is written whole or not at all (a temporary folder beside it, renamed at the end).
Raises (one ``error:`` line, exit 1): bad options, OUT inside DATA or holding files already, DATA with
no pairs, two pairs with the same file stem, an unreadable image.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


from cmddcli.data.synth import encode_jpeg, palette_roundtrip
from cmddcli.errors import CmddError, run_script
from cmddcli.eval.protocol import gather_items, load_for_eval
from cmddcli.photo.samples import from_float


def degrade(data: Path, out: Path, jpeg: int = 0, gif: int = 0, dither: bool = False, split: str = "val") -> int:
    """Write the degraded copy of ``data`` to ``out`` (see the module docstring); returns the number of pairs."""
    import shutil

    from PIL import Image

    if (jpeg != 0) == (gif != 0):
        raise CmddError("give exactly one of --jpeg Q (1-100) or --gif N (2-256)")
    if jpeg and not 1 <= jpeg <= 100 or gif and not 2 <= gif <= 256:
        raise CmddError(f"--jpeg must be 1-100 and --gif 2-256, got {jpeg or gif}")
    if dither and not gif:
        raise CmddError("--dither applies to --gif only")
    if split == "test":
        raise CmddError("the test split is test-only: degrade validation pairs (--split val)")
    if out.resolve().is_relative_to(data.resolve()):
        raise CmddError(f"{out}: is inside the data folder {data}; choose an output folder elsewhere")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CmddError(f"{out}: exists and is not an empty folder; refusing to mix degraded copies")
    items = gather_items(data=[str(data)], split=split)
    if not items:
        raise CmddError(f"{data}: no pairs found")
    stems = [Path(it.source).stem for it in items]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise CmddError(f"{data}: several pairs named {', '.join(clash)}; the copies would overwrite each other")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        for sub in ("source", "target"):
            (tmp / sub).mkdir(parents=True)
        for it, stem in zip(items, stems):
            src, tgt = load_for_eval(it.source), load_for_eval(it.target)
            if jpeg:
                (tmp / "source" / f"{stem}.jpg").write_bytes(encode_jpeg(src, jpeg))
            else:
                src = palette_roundtrip(src, gif, dither)
                tgt = palette_roundtrip(tgt, gif, dither)
                Image.fromarray(from_float(src)).save(tmp / "source" / f"{stem}.png")
            Image.fromarray(from_float(tgt)).save(tmp / "target" / f"{stem}.png")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(items)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="validation pairs folder")
    ap.add_argument("out", type=Path, help="output folder (new or empty)")
    ap.add_argument("--jpeg", type=int, default=0, metavar="Q", help="inputs as JPEG of this quality")
    ap.add_argument("--gif", type=int, default=0, metavar="N", help="inputs and targets on an N-colour palette")
    ap.add_argument("--dither", action="store_true", help="Floyd-Steinberg dither onto the palette (--gif)")
    ap.add_argument("--split", default="val", help="split of a DPDD tree or manifest (default val; test is refused)")
    args = ap.parse_args()
    n = degrade(args.data, args.out, args.jpeg, args.gif, args.dither, args.split)
    print(f"{n} pairs -> {args.out}")
    return 0


if __name__ == "__main__":
    run_script(main)
