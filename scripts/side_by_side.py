"""Side-by-side figure: each row = input | one column per folder (e.g. v1 | v2 | a peer), downsized.

    python scripts/side_by_side.py IN_DIR COL_DIR [COL_DIR ...] -o docs/img/blurred_only_results.png \
        --labels input,v1,v2,Restormer
Files are matched by stem (a column's file may also be named by a part of the input's stem, as a
peer's published outputs are); a column without a match leaves a blank tile in that row.
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
                tiles.append(np.zeros((args.height, tiles[0].shape[1] if tiles else args.height, 3), np.uint8))
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
