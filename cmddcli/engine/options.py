"""The engine's user-facing choices as plain values (no torch import), shared by the engine and the CLI."""

from __future__ import annotations

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # "auto": bf16 / fp16 on CUDA, bf16 on CPUs with native bf16, else fp32
# Pixels shared by neighbouring tiles (each side keeps half, blended). 32, not 64: the same seam error
# against the whole-image output, 5-11 % less time (benchmarks/RESULTS.md round 4, bench_overlap.py).
DEFAULT_OVERLAP = 32
