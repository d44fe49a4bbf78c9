"""Degraded copies of validation pairs: the blurred inputs as JPEG, or inputs and targets as GIF frames.

    python scripts/degrade_val.py DATA OUT --jpeg 60            # inputs saved as JPEG quality 60
    python scripts/degrade_val.py DATA OUT --gif 256 [--dither] # inputs and targets as 256-colour GIF frames

DATA is a folder of pairs as ``cmdd eval --data`` reads them (``source/``+``target/``, ``blur/``+``sharp/``
...); OUT gets ``source/`` and ``target/`` with the same file stems, ready for ``cmdd eval --data OUT``.

- ``--jpeg Q``: each input written as an 8-bit JPEG (Pillow, quality Q, 4:2:0), the target copied
  as 8-bit PNG. A proxy for web photos (issue 11, sessions 8-11: "JPEG-60 validation").
- ``--gif N``: input *and* target each mapped onto a palette of N colours (Pillow's median cut of the
  image itself, as a GIF encoder builds one per frame; ``--dither``: Floyd-Steinberg error diffusion)
  and written as 8-bit PNG (same pixels as the GIF, lossless). A proxy for the DPDD pairs published
  as GIF animations (``dpdd_gif_pairs``, whose inputs and targets both went through a palette).

The degradations are the training synthesiser's own (``cmddcli.data.synth.jpeg_roundtrip`` /
``palette_roundtrip``). Use validation pairs only (../shared/samples/defocus/dpdd_1024); the test pairs
and blurred_only/ are test-only. Raises (one ``error:`` line, exit 1): OUT inside DATA or holding
files already, DATA with no pairs, an unreadable image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmddcli.data.synth import palette_roundtrip  # noqa: E402
from cmddcli.errors import CmddError, run_script  # noqa: E402
from cmddcli.eval.protocol import gather_items, load_for_eval  # noqa: E402


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def degrade(data: Path, out: Path, jpeg: int = 0, gif: int = 0, dither: bool = False) -> int:
    """Write the degraded copy of ``data`` to ``out`` (see the module docstring); returns the number of pairs."""
    from PIL import Image

    if (jpeg > 0) == (gif > 0):
        raise CmddError("give exactly one of --jpeg Q (1-100) or --gif N (2-256)")
    if jpeg and not 1 <= jpeg <= 100 or gif and not 2 <= gif <= 256:
        raise CmddError(f"--jpeg must be 1-100 and --gif 2-256, got {jpeg or gif}")
    if out.resolve().is_relative_to(data.resolve()):
        raise CmddError(f"{out}: is inside the data folder {data}; choose an output folder elsewhere")
    if out.exists() and any(out.iterdir()):
        raise CmddError(f"{out}: exists and is not empty; refusing to mix degraded copies")
    items = gather_items(data=[str(data)])
    if not items:
        raise CmddError(f"{data}: no pairs found")
    for sub in ("source", "target"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for it in items:
        src, tgt = load_for_eval(it.source), load_for_eval(it.target)
        stem = Path(it.source).stem
        if jpeg:
            Image.fromarray(_to_uint8(src)).save(out / "source" / f"{stem}.jpg", format="JPEG", quality=jpeg)
        else:
            src = palette_roundtrip(src, gif, dither)
            tgt = palette_roundtrip(tgt, gif, dither)
            Image.fromarray(_to_uint8(src)).save(out / "source" / f"{stem}.png")
        Image.fromarray(_to_uint8(tgt)).save(out / "target" / f"{stem}.png")
    return len(items)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="validation pairs folder")
    ap.add_argument("out", type=Path, help="output folder (new or empty)")
    ap.add_argument("--jpeg", type=int, default=0, metavar="Q", help="inputs as JPEG of this quality")
    ap.add_argument("--gif", type=int, default=0, metavar="N", help="inputs and targets on an N-colour palette")
    ap.add_argument("--dither", action="store_true", help="Floyd-Steinberg dither onto the palette (--gif)")
    args = ap.parse_args()
    n = degrade(args.data, args.out, args.jpeg, args.gif, args.dither)
    print(f"{n} pairs -> {args.out}")
    return 0


if __name__ == "__main__":
    run_script(main)
