"""Time one token-major SS2D scan call of the compiled CPU kernel (the inference path of CMDDNet).

    python benchmarks/bench_token_scan.py [--shape 1,512,512,32,16,1] [--threads 2] [--reps 5]

``--shape`` is batch, H, W, d (channels), N (states), R (dt rank); the `small` preset's levels on a
512² tile are 1,512,512,32,16,1 / 1,256,256,64,16,2 / 1,128,128,128,16,4 / 1,64,64,256,16,8.
Random bf16 operands (u and x_proj's output, channels-last), K = 4 directions. Also times the same
call with the map declared 1 x L, where every direction walks memory in row order (same work,
different output): the difference is what the column-order walks cost. Prints ms per call, three
rounds. Take it on a quiet machine (pause other jobs with ``kill -STOP``). Results:
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

import torch


from cmddcli.model.kernels import scan_cpu
from cmddcli.runtime import tune_cpu_allocator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1,512,512,32,16,1", help="batch,H,W,d,N,R")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    if scan_cpu._load() is None:
        raise SystemExit(f"the cpu scan kernel is unavailable: {scan_cpu.why_unavailable()}")
    b, H, W, d, N, R = (int(v) for v in args.shape.split(","))
    K, L, P = 4, H * W, R + 2 * N
    torch.manual_seed(0)
    u = torch.randn(b, L, d).bfloat16()
    x = (torch.randn(b, L, (K * P + 7) // 8 * 8) * 0.5).bfloat16()  # rows padded to 8, as the model does
    Wdt = torch.randn(K, d, R) * 0.05
    A = -(torch.arange(1, N + 1).float().repeat(K * d, 1))
    D, bias = torch.randn(K * d), torch.full((K * d,), -4.5)

    def call(h: int, w: int) -> None:
        scan_cpu._run_tokens(u, x, Wdt, A, D, bias, h, w, torch.zeros(b, L, d))

    call(H, W)  # warm-up
    for _ in range(3):
        for label, hw in ((f"{H} x {W} map", (H, W)), (f"1 x {L} (row order only)", (1, L))):
            t = time.perf_counter()
            for _ in range(args.reps):
                call(*hw)
            print(f"{label}: {(time.perf_counter() - t) / args.reps * 1e3:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
