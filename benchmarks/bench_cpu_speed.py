"""Megapixels per second of the inference engine on CPU, by preset, precision and image size.

    python benchmarks/bench_cpu_speed.py --presets small,paper --precisions fp32,bf16 \
        --sizes 256,512,1024,2048 --out benchmarks/cpu_speed_after.md
    python benchmarks/bench_cpu_speed.py --root /tmp/base ...      # the same on another checkout

Each row runs in a fresh child process: a random-init CMDDNet of the preset (speed does not depend
on the weights) inside :class:`cmddcli.engine.Deblurrer` with its default CPU tiling (``tile=None``:
what ``cmdd deblur`` does), one warm-up call on a 256² image, then ``--repeats`` timed calls (default
1; the median is reported) on a random ``size x size`` image. MP/s counts image pixels, not the overlap the tiles recompute. Peak memory is
the process's peak resident set (VmHWM) after the timed call, model included. ``--root`` imports
cmddcli from another checkout (e.g. ``git worktree add /tmp/base <commit>``) to measure "before".
Take it on a quiet machine: pause other jobs (``kill -STOP``) while it runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from _procmem import proc_status  # benchmarks/ is on sys.path when run as a script


def child(spec: dict) -> dict:
    sys.path.insert(0, spec["root"])
    import numpy as np
    import torch

    from cmddcli.engine import Deblurrer
    from cmddcli.model import CMDDNet, model_config

    torch.manual_seed(0)
    net = CMDDNet(model_config(spec["preset"]))
    eng = Deblurrer(model=net, device="cpu", precision=spec["precision"])
    rng = np.random.default_rng(0)
    eng.restore(rng.random((256, 256, 3), dtype=np.float32))
    s = spec["size"]
    img = rng.random((s, s, 3), dtype=np.float32)
    tile, _ = eng.plan(s, s)
    times = []
    for _ in range(spec.get("repeats", 1)):
        t0 = time.perf_counter()
        eng.restore(img)
        times.append(time.perf_counter() - t0)
    dt = sorted(times)[len(times) // 2]  # the median (the upper one of an even count)
    hwm = (proc_status("VmHWM") or 0) / 2**20
    return {"seconds": dt, "tile": int(tile), "peak_mib": hwm, "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="small")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--sizes", default="256,512,1024,2048")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="checkout to import cmddcli from")
    ap.add_argument("--label", default="", help="a name for the code measured (e.g. a commit)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per row; the median is reported")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    lines = [
        f"Code: {args.label or args.root}; {platform.machine()}, torch threads = all cores; "
        f"random-init weights; default CPU tiling; median of {args.repeats} timed call(s) after a 256² warm-up.",
        "",
        "| preset | precision | image | tile | seconds | MP/s | peak MiB |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for preset in args.presets.split(","):
        for prec in args.precisions.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                spec = {"root": args.root, "preset": preset, "precision": prec, "size": size, "repeats": args.repeats}
                p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
                if p.returncode != 0:
                    row = f"| {preset} | {prec} | {size}x{size} | | failed: {p.stderr.strip().splitlines()[-1][:80]} | | |"
                else:
                    r = json.loads(p.stdout.strip().splitlines()[-1])
                    tile = "whole" if r["tile"] >= size else str(r["tile"])
                    row = (f"| {preset} | {prec} | {size}x{size} | {tile} | {r['seconds']:.2f} | "
                           f"{size * size / 1e6 / r['seconds']:.3f} | {r['peak_mib']:.0f} |")
                lines.append(row)
                print(row, flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
