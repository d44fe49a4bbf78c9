"""CMDDNet (`paper`, 9.74 M) against a Restormer of its published shape (26.1 M): forward time of one
image on the current device, median of several runs after a warm-up, both randomly initialised.

    python benchmarks/bench_vs_restormer.py --size 256 --out benchmarks/vs_restormer_cpu.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from restormer import Restormer  # noqa: E402

from cmddcli.engine.bench import machine_line  # noqa: E402
from cmddcli.model import CMDDNet, model_config  # noqa: E402
from cmddcli.model.ssm import choose_backend  # noqa: E402


@torch.no_grad()
def time_forward(net, x, repeats: int) -> float:
    net(x)  # warm-up (builds kernels, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    x = torch.rand(1, 3, args.size, args.size)
    cmdd = CMDDNet(model_config("paper")).eval()
    rest = Restormer().eval()
    backend = choose_backend("cpu", needs_grad=False).name
    t_c = time_forward(cmdd, x, args.repeats)
    t_r = time_forward(rest, x, args.repeats)
    n = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    table = "\n".join([
        f"Machine: {machine_line('cpu')}; input 1x3x{args.size}x{args.size}; median of {args.repeats} after a warm-up.",
        "",
        "| model | parameters | forward s | speed-up |",
        "|---|---:|---:|---:|",
        f"| CMDDNet `paper` (scan backend `{backend}`) | {n(cmdd):.2f} M | {t_c:.2f} | {t_r / t_c:.2f}x |",
        f"| Restormer (published shape, random init) | {n(rest):.2f} M | {t_r:.2f} | 1.00x |",
    ])
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
