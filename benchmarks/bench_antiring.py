"""Anti-ringing clamp on CPU: the time of :meth:`cmddcli.engine.AntiRing.apply` on a 12 MP image, for
the fast path's row bands against one whole-image pass and against a ``max_pool2d`` local range.

    python benchmarks/bench_antiring.py [--size 4000x3000] [--window 11] [--threads 2] [--repeats 3]

Random (1, 3, H, W) float32 input and output; median of ``--repeats`` runs after one warm-up. Every
variant's output is checked equal to the first's. Take it on a quiet machine (pause other jobs with
``kill -STOP``). The clamp's share of a whole photo: ``cmdd bench --photo 4000x3000 --weights W`` with
and without a card that names it (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import cmddcli.engine.antiring as A


def pooled_range(x: torch.Tensor, window: int):
    """The plain local range: separable ``max_pool2d`` (first implementation, for comparison)."""
    r = window // 2

    def pool_max(t):
        t = F.max_pool2d(t, (1, window), stride=1, padding=(0, r))
        return F.max_pool2d(t, (window, 1), stride=1, padding=(r, 0))

    return pool_max(-x).neg_(), pool_max(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="4000x3000")
    ap.add_argument("--window", type=int, default=11)
    ap.add_argument("--margin", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    w, h = map(int, args.size.lower().split("x"))
    g = torch.Generator().manual_seed(0)
    inp = torch.rand(1, 3, h, w, generator=g)
    out = inp + 0.2 * (torch.rand(1, 3, h, w, generator=g) - 0.5)
    ring = A.AntiRing(args.window, args.margin)
    rows = []
    first = None
    fast_range, default_band = A.local_range, A.BAND_ROWS
    variants = [(f"fast, bands of {b} rows" + (" (default)" if b == default_band else ""), b, fast_range)
                for b in (32, 64, 128)] + [("fast, whole image", h, fast_range), ("max_pool2d, whole image", h, pooled_range)]
    for label, band, fn in variants:
        A.BAND_ROWS, A.local_range = band, fn
        res = ring.apply(out, inp)  # warm-up
        if first is None:
            first = res
        assert torch.equal(res, first), label
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ring.apply(out, inp)
            times.append(time.perf_counter() - t0)
        rows.append((label, sorted(times)[len(times) // 2]))
    A.BAND_ROWS, A.local_range = default_band, fast_range
    print(f"AntiRing({args.window}, {args.margin:g}).apply on {w}x{h} ({w * h / 1e6:.1f} MP), {args.threads} threads, "
          f"median of {args.repeats}\n")
    print("| variant | seconds |\n|---|---:|")
    for label, sec in rows:
        print(f"| {label} | {sec:.2f} |")


if __name__ == "__main__":
    main()
