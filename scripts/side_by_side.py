"""Side-by-side figure: each row = input | cmdd output (| optional third column), downsized.

    python scripts/side_by_side.py IN_DIR OUT_DIR [THIRD_DIR] -o docs/img/blurred_only_results.png
Files are matched by stem; the third column (e.g. a peer's published outputs) is optional per row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

EXTS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"}


def _by_stem(folder: Path) -> dict:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in EXTS} if folder else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", type=Path)
    ap.add_argument("outputs", type=Path)
    ap.add_argument("third", type=Path, nargs="?")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--labels", default="input,cmdd,reference")
    ap.add_argument("--height", type=int, default=260, help="row height in pixels")
    args = ap.parse_args()
    labels = args.labels.split(",")
    ins, outs, thirds = _by_stem(args.inputs), _by_stem(args.outputs), _by_stem(args.third)
    rows = []
    for stem, p in ins.items():
        cols = [p, outs.get(stem)]
        if args.third:
            cols.append(next((v for k, v in thirds.items() if k in stem or stem.endswith(k)), None))
        tiles = []
        for i, c in enumerate(cols):
            if c is None:
                continue
            im = Image.open(c).convert("RGB")
            w = round(im.width * args.height / im.height)
            im = im.resize((w, args.height), Image.LANCZOS)
            ImageDraw.Draw(im).text((6, 4), labels[i], fill=(255, 255, 0))
            tiles.append(np.asarray(im))
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
