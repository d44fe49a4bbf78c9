"""Render docs/img/synth_contact_sheet.png: synthetic defocus pairs with their depth maps.

    python scripts/synth_contact_sheet.py SHARP_DIR... [-o docs/img/synth_contact_sheet.png] [--seed 3]

SHARP_DIRs are folders filled by scripts/fetch_sharp_sources.sh. The committed sheet uses only the
permissively licensed ones (``opencv-doc`` and ``skimage``) so that it needs no share-alike notice:

    python scripts/synth_contact_sheet.py /work/sharp_src/opencv-doc /work/sharp_src/skimage

Each row: the synthetic blurred
input, the sharp target, and the disparity map (bright = near) with the in-focus pixels (CoC < 1 px)
tinted green. The last row is a test chart of point lights at four depths (disk bokeh, occlusion).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cmddcli.photo.arrays import from_float
from cmddcli.data.sources import find_sharp_tiles, list_images, load_sharp
from cmddcli.data.synth import SynthConfig, synthesize

P = 224  # tile size shown (a multiple of the 32 px sharpness block)
LABEL = 18


def depth_panel(disparity: np.ndarray, coc: np.ndarray) -> np.ndarray:
    g = 0.15 + 0.85 * disparity[..., None].repeat(3, axis=2)
    focus = coc < 1.0
    g[focus] = 0.55 * g[focus] + 0.45 * np.array([0.1, 0.9, 0.2])
    return g


def point_lights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark scene with small bright dots on four depth planes; the nearest plane occludes a band."""
    rng = np.random.default_rng(seed)
    img = np.full((P, P, 3), 0.04, np.float32)
    img += 0.02 * rng.random((P, P, 3)).astype(np.float32)
    ys, xs = rng.integers(4, P - 4, 90), rng.integers(4, P - 4, 90)
    colours = rng.uniform(0.6, 1.0, (90, 3))
    for y, x, c in zip(ys, xs, colours):
        img[y - 1:y + 2, x - 1:x + 2] = c
    disp = np.repeat(np.repeat(np.array([[0.1, 0.4], [0.7, 1.0]], np.float32), P // 2, 0), P // 2, 1)
    band = slice(P // 2 - 18, P // 2 + 18)
    disp[band, :] = 0.55  # an in-focus strip across the middle, in front of the upper planes
    img[band, :] = np.where((np.arange(P) // 12 % 2 == 0)[None, :, None], 0.75, 0.25)  # sharp stripes
    return img, disp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sharp_dirs", type=Path, nargs="+")
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/img/synth_contact_sheet.png"))
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--rows", type=int, default=5, help="photographic rows (plus the point-light chart)")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    images = [p for d in args.sharp_dirs for p in list_images(d)]
    picks = []
    for i in rng.permutation(len(images)):
        tiles = find_sharp_tiles([images[i]], tile=P)
        if tiles:
            picks.append(tiles[int(rng.integers(len(tiles)))])
        if len(picks) == args.rows:
            break
    cfg = SynthConfig(max_coc=(6.0, 14.0))
    rows = []
    for k, t in enumerate(picks):
        crop = load_sharp(t.path)[t.y:t.y + P, t.x:t.x + P]
        s = synthesize(crop, np.random.default_rng([args.seed, k]), cfg)
        rows.append((f"{Path(t.path).name}  max CoC {s.params['max_coc']:.1f}px", s))
    img, disp = point_lights(args.seed)
    s = synthesize(img, np.random.default_rng([args.seed, 99]), cfg, disparity=disp, focus=0.55, max_coc=10.0)
    rows.append(("point lights at 4 depths, in-focus band at 0.55", s))

    W = 3 * P + 4 * 4
    sheet = Image.new("RGB", (W, LABEL + len(rows) * (P + LABEL + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    titles = ("synthetic blurred input", "sharp target", "disparity (near = bright, green = in focus)")
    for c, title in enumerate(titles):
        draw.text((4 + c * (P + 4), 3), title, fill="black")
    y = LABEL
    for label, s in rows:
        draw.text((4, y + 2), label, fill=(60, 60, 60))
        y += LABEL
        for c, panel in enumerate((s.blurred, s.sharp, depth_panel(s.disparity, s.coc))):
            sheet.paste(Image.fromarray(from_float(panel)), (4 + c * (P + 4), y))
        y += P + 4
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
