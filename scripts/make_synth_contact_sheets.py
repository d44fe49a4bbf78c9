"""Render the v2 synthesiser's figures for docs/synthetic_defocus.md.

    python scripts/make_synth_contact_sheets.py /work/sharp_src/opencv-doc /work/sharp_src/skimage

writes

- docs/img/synth_v2_psf_family.png: the PSF shapes (rows: kinds; columns: radii, cat's eye, per-channel
  radii), each normalised to its own maximum; polygon and ring are the held-out family;
- docs/img/synth_v2_contact_sheet.png: sharp | disparity | blurred input | target, for the presets
  v2 (sharp target), v2_dpdd (target with residual blur) and heldout.

Like scripts/synth_contact_sheet.py it uses only the permissively licensed sources (``opencv-doc``,
``skimage``) fetched by scripts/fetch_sharp_sources.sh.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cmddcli.photo.arrays import from_float
from cmddcli.data.sources import find_sharp_tiles, list_images, load_sharp
from cmddcli.data.synth import PSF_KINDS, PSFShape, psf_kernel, psf_kernels_rgb, segment_image, synth_preset, synthesize

P = 192  # patch shown
LABEL = 16
GAP = 4
T = 72  # PSF tile


def depth_panel(disparity: np.ndarray, coc: np.ndarray) -> np.ndarray:
    """Disparity as grey (near = bright), in-focus pixels (CoC < 1 px) tinted green."""
    g = 0.15 + 0.85 * disparity[..., None].repeat(3, axis=2)
    focus = coc < 1.0
    g[focus] = 0.55 * g[focus] + 0.45 * np.array([0.1, 0.9, 0.2])
    return g


def kernel_tile(k: np.ndarray, extent: int) -> np.ndarray:
    """A (T, T, 3) view of a (k, k) or (3, k, k) kernel on a (2·extent+1)² canvas, max = white."""
    k = k if k.ndim == 3 else np.repeat(k[None], 3, 0)
    n = 2 * extent + 1
    canvas = np.zeros((3, n, n), np.float32)
    o = (n - k.shape[1]) // 2
    canvas[:, o:o + k.shape[1], o:o + k.shape[2]] = k
    canvas /= canvas.max()
    img = Image.fromarray(from_float(canvas.transpose(1, 2, 0))).resize((T, T), Image.NEAREST)
    return np.asarray(img)


def psf_sheet(out: Path) -> None:
    radii = (2.0, 5.0, 10.0, 16.0)
    columns = [f"r = {r:g}" for r in radii] + ["r 10, cat's eye", "r 10, R/B radii"]
    examples = {"disk": {}, "rim": {"rim": 1.2, "rim_power": 4.0}, "apodized": {"rim": 0.8, "edge": 0.1},
                "gaussian": {"sigma": 0.5, "edge": 0.2}, "soft": {"edge": 0.35},
                "polygon": {"blades": 7, "rotation": 0.3, "rim": 0.4}, "ring": {}}
    name_w = 150
    sheet = Image.new("RGB", (name_w + len(columns) * (T + GAP), LABEL + len(PSF_KINDS) * (T + GAP)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(columns):
        draw.text((name_w + c * (T + GAP), 2), title, fill="black")
    for row, kind in enumerate(PSF_KINDS):
        shape = PSFShape(kind=kind, **examples[kind])
        y = LABEL + row * (T + GAP)
        draw.text((4, y + T // 2 - 6), kind + ("  (held out)" if kind in ("polygon", "ring") else ""), fill="black")
        tiles = [kernel_tile(psf_kernel(r, shape), int(r * 1.5) + 2) for r in radii]
        cat = PSFShape(kind=kind, catseye=0.6, cat_angle=0.8, **examples[kind])
        tiles.append(kernel_tile(psf_kernel(10.0, cat), 17))
        tiles.append(kernel_tile(psf_kernels_rgb(10.0, PSFShape(kind=kind, chroma=0.12, **examples[kind])), 17))
        for c, t in enumerate(tiles):
            sheet.paste(Image.fromarray(t), (name_w + c * (T + GAP), y))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB")


def crop_with_margin(img: np.ndarray, y: int, x: int, m: int) -> np.ndarray:
    """The P² crop at (y, x) with m pixels of context, reflected past the image border (as SynthDataset)."""
    h, w = img.shape[:2]
    top, left, bottom, right = min(m, y), min(m, x), min(m, h - y - P), min(m, w - x - P)
    crop = img[y - top:y + P + bottom, x - left:x + P + right]
    widths = ((m - top, m - bottom), (m - left, m - right)) + ((0, 0),) * (img.ndim - 2)
    return np.pad(crop, widths, mode="reflect")


def pairs_sheet(sharp_dirs: list[Path], out: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    images = [p for d in sharp_dirs for p in list_images(d)]
    plan = ["v2", "v2", "v2", "v2_dpdd", "v2_dpdd", "heldout"]
    picks = []
    for i in rng.permutation(len(images)):
        tiles = find_sharp_tiles([images[i]], tile=P)
        if tiles:
            picks.append(tiles[int(rng.integers(len(tiles)))])
        if len(picks) == len(plan):
            break
    rows = []
    for k, (t, preset) in enumerate(zip(picks, plan)):
        cfg = synth_preset(preset, noise_prob=0.0, jpeg_prob=0.0, max_coc=(6.0, 20.0))
        m = cfg.margin
        photo = load_sharp(t.path)
        crop = crop_with_margin(photo, t.y, t.x, m)
        seg = crop_with_margin(segment_image(photo), t.y, t.x, m)  # whole-photo segments, as in training
        s = synthesize(crop, np.random.default_rng([seed, k]), cfg, margin=m, segments=seg)
        psf = s.params["psf"]
        label = (f"{preset}: {Path(t.path).name}, {psf['kind']} PSF, max CoC {s.params['max_coc']:.1f}px"
                 + (f", R/B {psf['chroma']:+.2f}" if psf["chroma"] else "")
                 + (f", cat's eye {psf['catseye']:.2f}" if psf["catseye"] > 0.05 else ""))
        rows.append((label, s))
    titles = ("sharp source", "disparity (near = bright, green = in focus)", "blurred input", "target")
    sheet = Image.new("RGB", (4 * (P + GAP) + GAP, LABEL + len(rows) * (P + LABEL + GAP)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(titles):
        draw.text((GAP + c * (P + GAP), 3), title, fill="black")
    y = LABEL
    for label, s in rows:
        draw.text((GAP, y + 2), label, fill=(60, 60, 60))
        y += LABEL
        panels = (s.sharp, depth_panel(s.disparity, s.coc), s.blurred, s.target)
        for c, panel in enumerate(panels):
            sheet.paste(Image.fromarray(from_float(panel)), (GAP + c * (P + GAP), y))
        y += P + GAP
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sharp_dirs", type=Path, nargs="+")
    ap.add_argument("--out-dir", type=Path, default=Path("docs/img"))
    ap.add_argument("--seed", type=int, default=4)
    args = ap.parse_args()
    psf_sheet(args.out_dir / "synth_v2_psf_family.png")
    pairs_sheet(args.sharp_dirs, args.out_dir / "synth_v2_contact_sheet.png", args.seed)


if __name__ == "__main__":
    main()
