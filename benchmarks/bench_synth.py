"""Seconds per synthetic defocus pair on one core (the cost `cmdd train`'s loader workers pay).

    python benchmarks/bench_synth.py [--repeats 5]

Times :func:`cmddcli.data.synth.synthesize` on a procedural texture with one torch thread: the v1
preset at 256² (max CoC 16 px) and the v2 preset at 128² plus its margin (what a 128² training
patch costs). Speed figures live here, not in tests (which check behaviour only).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


from cmddcli.data.synth import SynthConfig, synth_preset, synthesize


def _texture(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.5 + 0.25 * np.sin(40 * x[..., None] * np.array([1.0, 1.3, 0.7])) * np.cos(30 * y[..., None])
    return np.clip(img + 0.05 * rng.standard_normal((h, w, 3)), 0, 1).astype(np.float32)


def _time(img: np.ndarray, cfg: SynthConfig, repeats: int, margin: int = 0) -> float:
    synthesize(img, 0, cfg, margin=margin)
    times = []
    for seed in range(1, repeats + 1):
        t0 = time.perf_counter()
        synthesize(img, seed, cfg, margin=margin)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    v2 = synth_preset("v2")
    rows = [
        ("v1, max CoC 16 px", "256²", _time(_texture(256, 256), SynthConfig(max_coc=(16.0, 16.0)), args.repeats)),
        ("v2", f"128² + {v2.margin} px margin",
         _time(_texture(128 + 2 * v2.margin, 128 + 2 * v2.margin), v2, args.repeats, v2.margin)),
    ]
    print("| preset | patch | median s per pair (1 thread) |\n|---|---|---:|")
    for name, size, sec in rows:
        print(f"| {name} | {size} | {sec:.3f} |")


if __name__ == "__main__":
    main()
