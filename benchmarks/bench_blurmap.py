"""Accuracy of the defocus map (cmddcli.engine.blurmap) on synthetic pairs with known CoC.

    python benchmarks/bench_blurmap.py [--pairs-per-image 2] [--out benchmarks/blurmap.json] [--no-focus]

Sharp pictures: scikit-image's bundled photos (astronaut, chelsea, coffee, camera, rocket, coins,
brick, grass, gravel), random 256x256 crops; defocus from cmddcli.data.synth with its default
ranges (CoC 2-16 px) and Poisson-Gaussian noise with probability 0.3, seed 0. Metric: Spearman
rank correlation between the estimated map and the true per-pixel CoC radius, over all pixels of
each pair (pairs whose true CoC is constant are skipped). Also reported for the network residual
|restored - input| (default weights, smoothed like the classical map) as the alternative estimator.

Second part (``focus_auto`` in the JSON; ``--no-focus`` skips it): the region ``--focus auto``
restores on the test suite's synthetic scenes (tests/test_photographer.py ``dead_leaves``: a
192x240 dead-leaves texture, an elliptic subject at one CoC in front of a background at another,
seeds 0-29) for three blur configurations. Per scene: the share of the background more than 32 px
from the subject that is kept exactly (weight 0), and the share of the subject more than 8 px
inside its outline restored fully (weight 1); a scene passes when both are 100 %.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from cmddcli.data.synth import SynthConfig, synthesize
from cmddcli.engine.blurmap import estimate_blur_map, spearman

FOCUS_CONFIGS = ((1.6, 8.0), (1.0, 5.0), (2.5, 12.0))  # (subject CoC, background CoC) radii in px
FOCUS_SEEDS = range(30)
NAMES = ("astronaut", "chelsea", "coffee", "camera", "rocket", "coins", "brick", "grass", "gravel")


def load(name: str) -> np.ndarray:
    import skimage.data

    a = getattr(skimage.data, name)()
    a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
    return a.astype(np.float32) / 255.0


def residual_map(engine, img: np.ndarray) -> np.ndarray:
    """Network residual magnitude, Gaussian-smoothed (σ 8 px): large where the network sharpened."""
    r = torch.from_numpy(np.abs(engine.restore(img) - img).mean(-1))[None, None]
    k = torch.exp(-torch.arange(-24, 25, dtype=torch.float32) ** 2 / 128)
    k /= k.sum()
    r = F.conv2d(F.pad(r, (24, 24, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    r = F.conv2d(F.pad(r, (0, 0, 24, 24), mode="reflect"), k.view(1, 1, -1, 1))
    return r[0, 0].numpy()


def focus_scene(seed: int, subject_coc: float, background_coc: float, h: int = 192, w: int = 240):
    """tests/test_photographer.py ``scene`` with other blur sizes: (subject mask, SynthSample)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_photographer import dead_leaves

    yy, xx = np.mgrid[0:h, 0:w]
    subject = ((yy - h / 2) / 48.0) ** 2 + ((xx - w / 2) / 56.0) ** 2 <= 1
    # CoC = K |d - focus| with focus 1 and K = background_coc: the background (d = 0) gets background_coc
    disparity = np.where(subject, 1.0 - subject_coc / background_coc, 0.0).astype(np.float32)
    return subject, synthesize(dead_leaves(h, w, seed), seed, disparity=disparity, focus=1.0, max_coc=background_coc)


def focus_bench() -> dict:
    from scipy import ndimage as ndi

    from cmddcli.engine.blurmap import focus_mask

    out = {}
    for sub, bg in FOCUS_CONFIGS:
        rows = []
        for seed in FOCUS_SEEDS:
            subject, s = focus_scene(seed, sub, bg)
            r = focus_mask(estimate_blur_map(s.blurred), image=s.blurred)
            far = ndi.distance_transform_edt(~subject) > 32
            inside = ndi.distance_transform_edt(subject) > 8
            rows.append({"seed": seed, "far_background_kept": round(float((r.mask[far] == 0).mean()), 5),
                         "subject_restored": round(float((r.mask[inside] == 1).mean()), 5),
                         "restored_fraction": round(r.subject_fraction, 4), "warning": r.warning})
        ok = [r["far_background_kept"] == 1 and r["subject_restored"] == 1 for r in rows]
        key = f"subject {sub:g} px, background {bg:g} px"
        out[key] = {"passed": int(sum(ok)), "scenes": len(rows),
                    "passed_seeds_0_5": int(sum(ok[:6])), "passed_seeds_0_11": int(sum(ok[:12])),
                    "min_far_background_kept": min(r["far_background_kept"] for r in rows),
                    "min_subject_restored": min(r["subject_restored"] for r in rows), "per_seed": rows}
        print(key, {k: v for k, v in out[key].items() if k != "per_seed"},
              "failed:", [r["seed"] for r, o in zip(rows, ok) if not o], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs-per-image", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/blurmap.json")
    ap.add_argument("--no-residual", action="store_true")
    ap.add_argument("--no-focus", action="store_true", help="skip the --focus auto scenes")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    engine = None
    if not args.no_residual:
        from cmddcli.engine import Deblurrer

        engine = Deblurrer(device="cpu")
    rows = []
    for name in NAMES:
        a = load(name)
        h, w = a.shape[:2]
        for _ in range(args.pairs_per_image):
            y, x = rng.integers(0, h - 255), rng.integers(0, w - 255)
            s = synthesize(a[y:y + 256, x:x + 256], rng, SynthConfig(noise_prob=0.3))
            if s.coc.std() < 1e-6:
                continue
            t = time.perf_counter()
            m = estimate_blur_map(s.blurred)
            row = {"image": name, "noise": "photons" in s.params, "max_coc": round(s.params["max_coc"], 2),
                   "classical": round(spearman(m, s.coc), 4), "seconds": round(time.perf_counter() - t, 4)}
            if engine is not None:
                row["residual"] = round(spearman(residual_map(engine, s.blurred), s.coc), 4)
            rows.append(row)
            print(row, flush=True)
    summary = {"pairs": len(rows)}
    for key in ("classical", "residual"):
        v = [r[key] for r in rows if key in r]
        if v:
            summary[key] = {"median": round(float(np.median(v)), 3), "mean": round(float(np.mean(v)), 3),
                            "min": round(float(np.min(v)), 3), "max": round(float(np.max(v)), 3)}
    print(json.dumps(summary, indent=1))
    result = {"summary": summary, "pairs": rows}
    if not args.no_focus:
        result["focus_auto"] = focus_bench()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
