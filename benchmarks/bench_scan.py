"""Time the CPU selective-scan backends at the sizes of CMDDNet's `paper` preset on a 256x256 input.

    python benchmarks/bench_scan.py [--out FILE] [--threads N] [--reps R] [--backends ref,torch,cpu]
                                    [--torch-levels 2,3,4] [--forward]

SS2D cross scan per level (K = 4 directions, N = 16 states, batch 1):
level 1: d = 72, 256x256 (L = 65536); level 2: d = 144, 128x128; level 3: d = 288, 64x64;
level 4: d = 576, 32x32. One 256x256 paper forward runs the level-1 scan 6 times (2 encoder,
2 decoder, 2 refinement blocks), levels 2 and 3 four times, level 4 twice.

`ref` (a Python loop over L) is timed only at a small map; `torch` (chunked PyTorch) at the levels
in --torch-levels (level 1 takes tens of seconds per call); `cpu` (the compiled kernel) everywhere.
Prints a markdown table (ms per call, G state-updates/s, the estimated scan seconds per forward)
and writes it to --out. --forward also times a whole paper forward at 256x256 with the cpu scan.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

import torch


from cmddcli.model.kernels import scan_cpu
from cmddcli.model.ssm import cross_scan_ref, selective_scan_ref, selective_scan_torch

K, N = 4, 16
# (level, d, H=W, scan calls per 256x256 paper forward)
LEVELS = [(1, 72, 256, 6), (2, 144, 128, 4), (3, 288, 64, 4), (4, 576, 32, 2)]
REF_SIZE = (72, 16)  # d, H=W for the Python-loop reference


def make_inputs(d: int, H: int, W: int, seed: int = 0):
    """Model-like inputs: dt bias as mamba-ssm's init (dt in [1e-3, 1e-1]), A = -(1..N)."""
    g = torch.Generator().manual_seed(seed)
    L = H * W
    u = torch.randn(1, d, L, generator=g)
    delta = torch.randn(1, K, d, L, generator=g) * 0.3
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(K * d, 1)
    B = torch.randn(1, K, N, L, generator=g)
    C = torch.randn(1, K, N, L, generator=g)
    D = torch.ones(K * d)
    dt = torch.exp(torch.rand(K * d, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    bias = dt + torch.log(-torch.expm1(-dt))
    return u, delta, A, B, C, D, bias


def backend_fn(name: str):
    if name == "ref":
        return lambda u, dl, A, B, C, D, b, H, W: cross_scan_ref(u, dl, A, B, C, D, b, H, W, scan=selective_scan_ref)
    if name == "torch":
        return lambda u, dl, A, B, C, D, b, H, W: cross_scan_ref(u, dl, A, B, C, D, b, H, W, scan=selective_scan_torch)
    if name == "cpu":
        return scan_cpu.cross_scan_cpu
    raise ValueError(name)


def time_call(fn, args, reps: int, budget_s: float = 60.0):
    """Wall (min, median) and process CPU time (min, all threads) in seconds over up to `reps`
    calls after one warm-up (fewer if slow). On a shared machine the wall time can be inflated by
    other processes; the CPU time shows what the call itself costs."""
    with torch.no_grad():
        t0 = time.perf_counter()
        fn(*args)  # warm-up (and first-use compile outside the timing)
        first = time.perf_counter() - t0
        n = max(1, min(reps, int(budget_s / max(first, 1e-6))))
        ts, cs = [], []
        for _ in range(n):
            c = time.process_time()
            t = time.perf_counter()
            fn(*args)
            ts.append(time.perf_counter() - t)
            cs.append(time.process_time() - c)
    return min(ts), statistics.median(ts), min(cs), len(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the markdown table here")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--backends", default="ref,torch,cpu")
    ap.add_argument("--torch-levels", default="2,3,4", help="levels at which to time the torch backend")
    ap.add_argument("--forward", action="store_true", help="also time a paper forward at 256x256 (cpu scan)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    torch_levels = {int(x) for x in args.torch_levels.split(",") if x.strip()}
    if "cpu" in backends and not scan_cpu.available():
        print(f"cpu backend unavailable: {scan_cpu.why_unavailable()}", file=sys.stderr)
        backends.remove("cpu")

    cpu_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu_name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        f"CPU: {cpu_name}, {torch.get_num_threads()} threads, torch {torch.__version__}"
        + (f", kernel: {scan_cpu.kernel_info()}" if "cpu" in backends else ""),
        "",
        "| size | backend | d | map | L | ms/call (min) | ms/call (median) | CPU ms/call | G updates/s | calls/fwd | s per 256² fwd |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    totals: dict = {}
    rows = []
    if "ref" in backends:
        d, s = REF_SIZE
        rows.append(("small", "ref", d, s, 0))
    for level, d, s, calls in LEVELS:
        for b in backends:
            if b == "ref" or (b == "torch" and level not in torch_levels):
                continue
            rows.append((f"level {level}", b, d, s, calls))
    for label, b, d, s, calls in rows:
        inputs = make_inputs(d, s, s)
        tmin, tmed, cmin, n = time_call(backend_fn(b), (*inputs, s, s), args.reps)
        L = s * s
        updates = K * d * L * N
        per_fwd = tmin * calls
        if calls:
            totals[b] = totals.get(b, 0.0) + per_fwd
        line = (
            f"| {label} | {b} | {d} | {s}x{s} | {L} | {tmin * 1e3:.1f} | {tmed * 1e3:.1f} | {cmin * 1e3:.1f} | "
            f"{updates / tmin / 1e9:.3g} | {calls or '-'} | " + (f"{per_fwd:.3f} |" if calls else "- |")
        )
        lines.append(line)
        print(line, flush=True)
    lines.append("")
    total_updates = sum(K * d * s * s * N * calls for _, d, s, calls in LEVELS)
    lines.append(f"State updates per 256² paper forward: {total_updates / 1e9:.2f} G.")
    for b, tot in totals.items():
        covered = torch_levels if b == "torch" else {lv for lv, *_ in LEVELS}
        note = "" if covered >= {lv for lv, *_ in LEVELS} else f" (levels {sorted(covered)} only)"
        lines.append(f"Estimated scan time per 256² paper forward, {b}: {tot:.2f} s{note}.")
    if args.forward and "cpu" in backends:
        from cmddcli.model import CMDDNet, model_config

        os.environ["CMDD_SCAN"] = "cpu"
        torch.manual_seed(0)
        net = CMDDNet(model_config("paper")).eval()
        x = torch.rand(1, 3, 256, 256)
        tmin, tmed, cmin, n = time_call(net, (x,), reps=3, budget_s=120)
        lines.append(
            f"Whole paper forward at 256x256 with the cpu scan: {tmin:.2f} s (min of {n}), median {tmed:.2f} s, "
            f"CPU time {cmin:.2f} s (all threads)."
        )
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
