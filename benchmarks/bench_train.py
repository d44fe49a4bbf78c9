"""Training throughput and peak memory per progressive stage (128²x8, 192²x4, 256²x1 by default).

    python benchmarks/bench_train.py --preset tiny --iters 5 --out benchmarks/TRAIN_CPU.md
    python benchmarks/bench_train.py --preset paper --stages 128x8 --iters 2 --warmup 1
    python benchmarks/bench_train.py --device cuda --preset paper --precision bf16 --iters 50

Each (preset, stage) runs in a fresh child process and times the real training step of
:class:`cmddcli.train.loop.Trainer` (autocast per ``--precision``, L1, backward, clip-norm 0.01, Adam,
lr schedule) on random batches already in memory: the data pipeline is not measured. Iterations per
second are over ``--iters`` timed steps after ``--warmup`` untimed ones. Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` (weights and optimizer state included); on CPU the rise of the
peak resident set (VmHWM) over what the process held after building the model and optimizer, i.e.
activations, gradients, Adam state and allocator slack of the first steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


from _procmem import proc_status  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from cmddcli.train.config import train_preset
from cmddcli.train.overrides import apply_overrides
from cmddcli.runtime import DistInfo, resolve_device
from cmddcli.train.loop import Trainer


def child(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    cfg = apply_overrides(train_preset("paper"), [
        f'model.preset="{spec["preset"]}"', f'precision="{spec["precision"]}"', f'device="{spec["device"]}"',
        f"compile={'true' if spec['compile'] else 'false'}", "out=\"/nonexistent\"",
        'data.kind="synth"'])  # the batches are made here; synth needs no data path (Trainer checks)
    device = resolve_device(spec["device"])
    trainer = Trainer(cfg, DistInfo(device=device))
    params = sum(p.numel() for p in trainer.model.parameters())
    cuda = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    b, p = spec["batch"], spec["patch"]
    x = torch.rand(b, 3, p, p, generator=g)
    y = (x + 0.05 * torch.randn(b, 3, p, p, generator=g)).clamp(0, 1)
    if cuda:
        x, y = x.to(device), y.to(device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = proc_status("VmRSS")
    it = 1
    for _ in range(spec["warmup"]):
        trainer.iteration(x, y, it)
        it += 1
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(spec["iters"]):
        trainer.iteration(x, y, it)  # .item() on the loss syncs every step
        it += 1
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else (proc_status("VmHWM") or 0) - (base or 0)
    return {"preset": spec["preset"], "patch": p, "batch": b, "params_m": params / 1e6,
            "it_s": spec["iters"] / dt, "img_s": spec["iters"] * b / dt, "s_per_it": dt / spec["iters"],
            "peak_mib": peak / 2**20, "device": str(device), "precision": spec["precision"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="model preset(s), comma separated")
    ap.add_argument("--stages", default="128x8,192x4,256x1", help="PATCHxBATCH list")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    rows = []
    for preset in args.preset.split(","):
        for st in args.stages.split(","):
            patch, batch = (int(v) for v in st.lower().split("x"))
            spec = {"preset": preset, "patch": patch, "batch": batch, "device": args.device,
                    "precision": args.precision, "compile": args.compile, "iters": args.iters,
                    "warmup": args.warmup, "threads": args.threads}
            res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                 text=True)
            if res.returncode != 0:
                print(res.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"child failed for {preset} {st}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{preset} {patch}²x{batch}: {row['it_s']:.3f} it/s, {row['peak_mib']:.0f} MiB", file=sys.stderr)
    dev = rows[0]["device"]
    cpu = platform.processor() or platform.machine()
    lines = [
        f"Training step throughput (`benchmarks/bench_train.py`), device `{dev}`"
        f"{f' ({args.threads} threads, {cpu})' if dev == 'cpu' else ''}, precision {args.precision}, "
        f"torch {torch.__version__}, {args.iters} timed steps after {args.warmup} warm-up.",
        "",
        "| preset | params | patch x batch | it/s | s/it | images/s | peak memory (MiB) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['params_m']:.2f} M | {r['patch']}² x {r['batch']} | {r['it_s']:.3f} | "
                     f"{r['s_per_it']:.2f} | {r['img_s']:.2f} | {r['peak_mib']:.0f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
