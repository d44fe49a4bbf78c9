"""Engine throughput and peak memory by tile size and precision.

    python benchmarks/bench_engine.py --preset tiny --size 1024x1024 --tiles 0,512,256 --out ENGINE_CPU.md
    python benchmarks/bench_engine.py --device cuda --preset paper --size 2048x3072 \
        --tiles 0,1024,512 --precisions fp32,bf16,fp16 --out ENGINE_CUDA.md

Writes a markdown table to stdout and to ``--out``. Each configuration runs in a fresh child
process. Megapixels per second count image pixels (not the overlap the tiles recompute), best of
``--repeats`` calls after a warm-up call. Peak memory is measured on the first (cold) call, above
what the process held before it (model weights and the input image excluded): on CUDA
``torch.cuda.max_memory_allocated``; on CPU the rise of the peak resident set (VmHWM in
/proc/self/status), which includes activations, tile accumulators and allocator slack. A
random-init network is used: speed and memory do not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


from _procmem import proc_status  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from cmddcli.engine import Deblurrer
from cmddcli.engine.tiling import plan_tiles
from cmddcli.model import CMDDNet, model_config


def child(cfg: dict) -> dict:
    """Run one configuration in this (fresh) process."""
    h, w = cfg["h"], cfg["w"]
    torch.manual_seed(0)
    net = CMDDNet(model_config(cfg["preset"])).eval()
    image = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
    eng = Deblurrer(model=net, device=cfg["device"], precision=cfg["precision"], tile=cfg["tile"],
                    overlap=cfg["overlap"], batch_tiles=cfg["batch_tiles"], threads=cfg["threads"])
    tile, batch = eng.plan(h, w)
    overlap = min(cfg["overlap"], tile // 2)
    n_tiles = 1 if tile >= max(h, w) else len(plan_tiles(h, w, tile, overlap, None, eng.align))
    cuda = eng.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(eng.device)
        base = torch.cuda.memory_allocated(eng.device)
        torch.cuda.reset_peak_memory_stats(eng.device)
    else:
        base = proc_status("VmRSS") or 0
    t0 = time.perf_counter()
    eng.restore(image)  # cold call: memory (and the time of a first call)
    if cuda:
        torch.cuda.synchronize(eng.device)
        peak = torch.cuda.max_memory_allocated(eng.device) - base
    else:
        peak = (proc_status("VmHWM") or 0) - base
    best = time.perf_counter() - t0 if cfg["repeats"] == 0 else float("inf")
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter()
        eng.restore(image)
        if cuda:
            torch.cuda.synchronize(eng.device)
        best = min(best, time.perf_counter() - t0)
    from cmddcli.model import ssm

    if cuda:
        where = torch.cuda.get_device_name(eng.device)
    else:
        where = f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    return {"seconds": best, "peak": peak, "tiles": n_tiles, "batch": batch, "device": str(eng.device),
            "where": where, "backend": ssm.choose_backend(eng.device.type, needs_grad=False).name}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Engine throughput and peak memory by tile size and precision.")
    ap.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    ap.add_argument("--size", default="1024x1024", help="HxW of the test image")
    ap.add_argument("--tiles", default="0,512,256", help="comma list of tile sizes; 0 = whole image")
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--precisions", default=None, help="comma list (default: fp32 on CPU, fp32,bf16,fp16 on CUDA)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls after the cold one (0: time the cold call)")
    ap.add_argument("--batch-tiles", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    h, w = (int(v) for v in args.size.lower().split("x"))
    cuda = args.device.startswith("cuda")
    precisions = (args.precisions or ("fp32,bf16,fp16" if cuda else "fp32")).split(",")
    tiles = [int(t) for t in args.tiles.split(",")]

    rows, info = [], {}
    for precision in precisions:
        for tile in tiles:
            cfg = dict(preset=args.preset, h=h, w=w, device=args.device, precision=precision, tile=tile,
                       overlap=args.overlap, batch_tiles=args.batch_tiles, threads=args.threads,
                       repeats=args.repeats)
            p = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True)
            if p.returncode != 0:
                sys.stderr.write(p.stderr)
                raise SystemExit(f"configuration {cfg} failed")
            info = json.loads(p.stdout.strip().splitlines()[-1])
            secs, peak = info["seconds"], info["peak"]
            rows.append((args.preset, info["device"], precision, tile or "whole", info["tiles"], info["batch"],
                         f"{h}x{w}", f"{secs:.2f}", f"{h * w / 1e6 / secs:.3f}", f"{peak / 2**20:.0f}"))
            print(f"  {precision} tile={tile or 'whole'}: {secs:.2f}s, {peak / 2**20:.0f} MiB", file=sys.stderr)

    head = (f"Engine benchmark: preset `{args.preset}`, {info.get('where')}, torch {torch.__version__}, "
            f"scan backend `{info.get('backend')}`, overlap {args.overlap}, "
            + (f"best of {args.repeats} after a warm-up call" if args.repeats else "cold call")
            + "; peak memory of the cold call above the loaded model.\n\n")
    cols = ("preset", "device", "precision", "tile", "tiles", "batch", "image", "seconds", "MP/s", "peak MiB")
    table = "| " + " | ".join(cols) + " |\n|" + "|".join("---" for _ in cols) + "|\n"
    table += "".join("| " + " | ".join(str(c) for c in r) + " |\n" for r in rows)
    text = head + table
    sys.stdout.write(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
