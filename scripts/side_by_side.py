"""Side-by-side figure: each row = input | one column per folder (e.g. v1 | v2 | a peer), downsized.

    python scripts/side_by_side.py IN_DIR COL_DIR [COL_DIR ...] -o docs/img/blurred_only_crops.jpg --crop 280 \
        --labels input,v1,v2,Restormer
Files are matched by stem (a column's file may also be named by a part of the input's stem, as a
peer's published outputs are); a column without a match leaves a blank tile in that row.
`--crop S` shows an S x S crop at 100 % (pixels as written, no resizing; centred, or at `--at FX,FY`,
fractions of the width and height) instead of the whole photo downsized: sharpening and ringing are
only visible at full scale. A .jpg output is written at quality 92.
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
    ap.add_argument("columns", type=Path, nargs="+", help="output folders, one column each")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--labels", default="input,cmdd,reference")
    ap.add_argument("--height", type=int, default=260, help="row height in pixels")
    ap.add_argument("--crop", type=int, default=0, help="S: an S x S crop at 100 %% instead of the downsized photo")
    ap.add_argument("--at", default="0.5,0.5", help="crop centre as fractions of width,height")
    args = ap.parse_args()
    labels = args.labels.split(",")
    if len(labels) < 1 + len(args.columns):
        raise SystemExit(f"--labels: {len(labels)} labels for {1 + len(args.columns)} columns")
    ins = _by_stem(args.inputs)
    cols_by_stem = [_by_stem(c) for c in args.columns]
    rows = []
    for stem, p in ins.items():
        cols = [p] + [col.get(stem) or next((v for k, v in col.items() if k in stem or stem.endswith(k)), None)
                      for col in cols_by_stem]
        tiles = []
        for i, c in enumerate(cols):
            if c is None:  # blank tile keeps the columns aligned
                side = tiles[0].shape[0] if tiles else (args.crop or args.height)
                tiles.append(np.zeros((side, tiles[0].shape[1] if tiles else side, 3), np.uint8))
                continue
            im = Image.open(c).convert("RGB")
            if args.crop:
                fx, fy = (float(v) for v in args.at.split(","))
                s = min(args.crop, im.width, im.height)
                x0 = min(max(0, round(fx * im.width - s / 2)), im.width - s)
                y0 = min(max(0, round(fy * im.height - s / 2)), im.height - s)
                im = im.crop((x0, y0, x0 + s, y0 + s))
            else:
                w = round(im.width * args.height / im.height)
                im = im.resize((w, args.height), Image.LANCZOS)
            ImageDraw.Draw(im).text((6, 4), labels[i], fill=(255, 255, 0))
            tiles.append(np.asarray(im))
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    extra = {"quality": 92} if args.out.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out, optimize=True, **extra)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
