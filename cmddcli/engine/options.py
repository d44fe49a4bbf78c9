"""The engine's user-facing choices as plain values (no torch import), shared by the engine and the CLI."""

from __future__ import annotations

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # "auto": bf16 / fp16 on CUDA, bf16 on CPUs with native bf16, else fp32
DEFAULT_OVERLAP = 32  # pixels shared by neighbouring tiles (each side keeps half, blended); 32, not 64: same seam error, 5-11 % less time (benchmarks/RESULTS.md, bench_overlap.py)
