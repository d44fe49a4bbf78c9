#!/usr/bin/env python3
"""The GPU measurements in one run: scan backends, whole-model speed and memory, the tile
engine on a 24-megapixel photo, training speed, a Restormer-size comparison, and a mamba-ssm
cross-check. Writes a markdown table and JSON to ``$OUT`` (or ``--out``) after every section, so
whatever finished survives a time-out.

    python benchmarks/gpu_bench.py                  # on the GPU machine (see benchmarks/gpu_run.sh)
    python benchmarks/gpu_bench.py --smoke          # tiny sizes on CPU (Triton interpreter): checks
                                                    # that every section runs, times mean nothing

Every section and every row is guarded: an error (out of memory, a missing backend, an engine
that is not there yet) is written into the table and the run goes on. Sections run in priority
order within ``--budget`` seconds; those that no longer fit are listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "out"), help="output folder")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU through the Triton interpreter")
    p.add_argument("--only", default="", help="comma-separated section keys to run (default: all)")
    return p.parse_args(argv)


ARGS = _parse_args()
if ARGS.smoke:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from restormer import Restormer  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() and not ARGS.smoke else "cpu")
if ARGS.smoke:  # the tests' vectorised interpreter scan makes the smoke run minutes faster
    try:
        sys.path.insert(0, str(ROOT / "tests"))
        from test_scan_triton import _vectorised_generic_scan
        from triton.runtime import interpreter as _interp

        _interp.ScanOps.generic_scan = _vectorised_generic_scan
    except Exception as _e:  # noqa: BLE001 - only slower without it
        print("smoke: interpreter scan not patched:", _e)
CUDA = DEV.type == "cuda"
T0 = time.perf_counter()


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
class Report:
    def __init__(self, out_dir: Path):
        self.out = out_dir
        self.out.mkdir(parents=True, exist_ok=True)
        self.env: dict = {}
        self.sections: list = []

    def section(self, key: str, title: str, columns: list, note: str = "") -> dict:
        s = {"key": key, "title": title, "columns": columns, "rows": [], "notes": [note] if note else []}
        self.sections.append(s)
        return s

    def write(self) -> None:
        (self.out / "gpu_results.json").write_text(json.dumps({"env": self.env, "sections": self.sections}, indent=1))
        lines = ["# cmdd GPU benchmark", ""]
        for k, v in self.env.items():
            lines.append(f"- **{k}**: {v}")
        for s in self.sections:
            lines += ["", f"## {s['title']}", ""]
            if s["rows"]:
                cols = s["columns"]
                lines.append("| " + " | ".join(cols) + " |")
                lines.append("|" + "---|" * len(cols))
                for r in s["rows"]:
                    lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
            for n in s["notes"]:
                lines += ["", n]
        (self.out / "gpu_results.md").write_text("\n".join(lines) + "\n")


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 100:
            return f"{v:.0f}"
        if a >= 1:
            return f"{v:.2f}"
        if a >= 1e-2:
            return f"{v:.3f}"
        return f"{v:.1e}"
    return str(v).replace("|", "/").replace("\n", " ")


def _err(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
    return "error: " + msg[:160]


REPORT = Report(Path(ARGS.out))


def left() -> float:
    return ARGS.budget - (time.perf_counter() - T0)


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
def sync():
    if CUDA:
        torch.cuda.synchronize()


def time_ms(fn, warmup: int = 1, max_s: float = 2.0, max_reps: int = 30) -> float:
    """Median milliseconds of fn() after warm-up; repetitions fit in about max_s seconds."""
    for _ in range(warmup):
        fn()
    sync()
    t = time.perf_counter()
    fn()
    sync()
    est = time.perf_counter() - t
    reps = int(max(1, min(max_reps, max_s / max(est, 1e-5))))
    times = []
    for _ in range(reps):
        if CUDA:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    if not times:
        return est * 1e3
    return float(np.median(times))


def peak_reset():
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if CUDA else float("nan")


def autocast(precision: str):
    import contextlib

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=DEV.type, dtype=dtype)


def set_scan(name: str) -> None:
    os.environ["CMDD_SCAN"] = name


# ----------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------
if ARGS.smoke:
    LEVELS = [("level 1", 2, 8, 8), ("level 2", 4, 4, 4)]  # (name, d, H, W)
    MODEL_PRESET, MODEL_SIZES = "tiny", [(32, 32), (48, 40)]
    TRAIN_CASES = [(32, 2)]
    PHOTO = (200, 300)
    RESTORMER_SIZES = [(32, 32)]
else:
    # The paper preset at a 256x256 input: d = 2c with c = 36, 72, 144, 288 at H/1 .. H/8.
    LEVELS = [("level 1", 72, 256, 256), ("level 2", 144, 128, 128), ("level 3", 288, 64, 64), ("level 4", 576, 32, 32)]
    MODEL_PRESET, MODEL_SIZES = "paper", [(256, 256), (1120, 1680), (1536, 2320)]
    TRAIN_CASES = [(128, 8), (256, 1)]
    PHOTO = (4000, 6000)  # 24 megapixels
    RESTORMER_SIZES = [(256, 256), (1120, 1680)]
N_STATE, K_DIRS = 16, 4


def scan_backends() -> dict:
    """name -> (cross-scan callable (u, delta, A, B, C, D, bias, H, W), or the reason it is missing)."""
    from cmddcli.model.kernels import scan_triton
    from cmddcli.model.ssm import cross_scan_ref, selective_scan_torch

    out = {}
    if scan_triton.available():
        out["triton fused"] = scan_triton.cross_scan_triton
        out["triton 1-D + copies"] = lambda *a: cross_scan_ref(*a[:7], a[7], a[8], scan=scan_triton.selective_scan_triton)
    else:
        out["triton fused"] = scan_triton.why_unavailable()
    try:
        from cmddcli.model.kernels import scan_mamba

        if scan_mamba.available():
            out["mamba-ssm + copies"] = lambda *a: cross_scan_ref(*a[:7], a[7], a[8], scan=scan_mamba.selective_scan_mamba)
        else:
            out["mamba-ssm + copies"] = scan_mamba.why_unavailable()
    except Exception as e:
        out["mamba-ssm + copies"] = _err(e)
    out["torch chunked + copies"] = lambda *a: cross_scan_ref(*a[:7], a[7], a[8], scan=selective_scan_torch)
    return out


def cross_inputs(b, d, H, W, dtype=torch.float32, seed=0):
    """SS2D-like inputs: dt bias as mamba-ssm initialises it, A = -(1..N), D = 1."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    L = H * W
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u = r(b, d, L)
    delta = 0.1 * r(b, K_DIRS, d, L)
    A = -torch.arange(1, N_STATE + 1, dtype=torch.float32).repeat(K_DIRS * d, 1)
    B, C = r(b, K_DIRS, N_STATE, L), r(b, K_DIRS, N_STATE, L)
    D = torch.ones(K_DIRS * d)
    dt = torch.exp(torch.rand(K_DIRS * d, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    bias = dt + torch.log(-torch.expm1(-dt))
    half = [t.to(DEV, dtype) for t in (u, delta)]
    bc = [t.to(DEV, dtype) for t in (B, C)]
    return [half[0], half[1], A.to(DEV), bc[0], bc[1], D.to(DEV), bias.to(DEV)]


def rel(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))


def fwd_bwd(fn, args, dy):
    leaves = [a.detach().clone().requires_grad_() for a in args]
    y = fn(*leaves)
    y.backward(dy)
    return y.detach(), [a.grad for a in leaves]


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------
def sec_env():
    env = REPORT.env
    env["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    env["python"] = platform.python_version()
    env["torch"] = torch.__version__
    env["torch CUDA"] = torch.version.cuda
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as e:
        env["triton"] = _err(e)
    if CUDA:
        p = torch.cuda.get_device_properties(0)
        env["device"] = f"{p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}"
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            env["driver, max SM clock"] = smi.stdout.strip()
        except Exception as e:
            env["driver"] = _err(e)
    else:
        env["device"] = "CPU (smoke run: times are meaningless)" if ARGS.smoke else "CPU: no CUDA device"
    try:
        import mamba_ssm

        env["mamba-ssm"] = getattr(mamba_ssm, "__version__", "imported")
    except Exception as e:
        env["mamba-ssm"] = "not importable: " + _err(e)[7:]
    env["budget s"] = ARGS.budget
    print(json.dumps(env, indent=1), flush=True)


def sec_scan():
    """Cross scan (SS2D core) at the paper preset's sizes for a 256x256 input, batch 1."""
    cols = ["level", "d x K", "L", "backend", "dtype", "fwd ms", "fwd+bwd ms", "fwd GB/s", "err y", "err grads", "config"]
    s = REPORT.section("scan", "Selective scan: 4-direction cross scan, batch 1, N=16 (paper preset at 256x256)", cols,
                       "err = max|x - x_torch| / max|x_torch| against the chunked torch backend in float32 "
                       "(inputs rounded to the row's dtype first). GB/s counts the fewest bytes a forward must move "
                       "(u, delta, B, C read once, y written once). 'copies' backends materialise the 4 permuted "
                       "maps as the registry's fallback does; 'fused' does not.")
    backends = scan_backends()
    for name, fn in backends.items():
        if isinstance(fn, str):
            s["notes"].append(f"{name}: unavailable ({fn})")
    from cmddcli.model.kernels import scan_triton

    for lname, d, H, W in LEVELS:
        L = H * W
        for dtype in (torch.float32, torch.bfloat16):
            if left() < 60:
                s["notes"].append(f"stopped before {lname} {dtype}: {left():.0f}s left")
                REPORT.write()
                return
            try:
                args = cross_inputs(1, d, H, W, dtype=dtype, seed=hash(lname) % 1000)
                dy = torch.randn(1, d, L, device=DEV)
                ref_fn = backends["torch chunked + copies"]
                y_ref, g_ref = fwd_bwd(lambda *a: ref_fn(*a, H, W), [a.float() for a in args], dy)
            except Exception as e:
                s["rows"].append({"level": lname, "backend": "reference", "fwd ms": _err(e)})
                continue
            esize = torch.tensor([], dtype=dtype).element_size()
            nbytes = esize * (d * L + K_DIRS * d * L + 2 * K_DIRS * N_STATE * L + d * L)
            for name, fn in backends.items():
                if isinstance(fn, str) or (dtype != torch.float32 and name.startswith("torch")):
                    continue
                row = {"level": lname, "d x K": f"{d}x{K_DIRS}", "L": L, "backend": name, "dtype": str(dtype)[6:]}
                if name.startswith("triton"):
                    try:
                        row["config"] = "BD,BL,warps,BNS=" + ",".join(
                            str(v) for v in scan_triton.launch_config(1, K_DIRS, d, N_STATE, L, DEV))
                    except Exception as e:
                        row["config"] = _err(e)
                try:
                    with torch.inference_mode():
                        ms = time_ms(lambda: fn(*args, H, W), max_s=1.5)
                    row["fwd ms"] = ms
                    row["fwd GB/s"] = nbytes / ms / 1e6
                except Exception as e:
                    row["fwd ms"] = _err(e)
                try:
                    y, g = fwd_bwd(lambda *a: fn(*a, H, W), args, dy)
                    row["err y"] = rel(y, y_ref)
                    row["err grads"] = max(rel(a, b) for a, b in zip(g, g_ref))
                    y = g = None  # free device memory
                    leaves = [a.detach().clone().requires_grad_() for a in args]
                    row["fwd+bwd ms"] = time_ms(lambda: fn(*leaves, H, W).backward(dy), max_s=1.5)
                    leaves = None  # free device memory
                except Exception as e:
                    row["fwd+bwd ms"] = _err(e)
                    traceback.print_exc()
                s["rows"].append(row)
                log(f"scan {lname} {row['dtype']} {name}: {row.get('fwd ms')} / {row.get('fwd+bwd ms')} ms")
                REPORT.write()
            args = dy = y_ref = g_ref = None  # free device memory
            peak_reset()


def sec_mamba_check():
    """mamba-ssm's selective_scan_fn against ours on the same 1-D inputs: outputs, gradients, time."""
    cols = ["case", "b x dim x L, G", "dtype", "err y", "err grads (max over inputs)", "ours fwd ms",
            "mamba fwd ms", "ours fwd+bwd ms", "mamba fwd+bwd ms"]
    s = REPORT.section("mamba", "mamba-ssm cross-check (1-D selective scan)", cols,
                       "err = max|ours - mamba| / max|mamba|. Ours = selective_scan_triton.")
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as e:
        s["notes"].append("mamba-ssm not importable here: " + _err(e)[7:] + " (see mamba_build.log)")
        return
    from cmddcli.model.kernels.scan_triton import selective_scan_triton

    def mamba(u, delta, A, B, C, D, bias):
        return selective_scan_fn(u, delta, A, B, C, D=D, z=None, delta_bias=bias, delta_softplus=True)

    cases = [("level 3 as 1-D", 2, 288, 4096, 1), ("level 1, 4 groups", 1, 288, 65536, 4)]
    for cname, b, dim, L, G in cases:
        for dtype in (torch.float32, torch.bfloat16):
            if left() < 30:
                s["notes"].append(f"stopped: {left():.0f}s left")
                return
            row = {"case": cname, "b x dim x L, G": f"{b}x{dim}x{L}, {G}", "dtype": str(dtype)[6:]}
            try:
                g = torch.Generator().manual_seed(b * dim + L)
                u = torch.randn(b, dim, L, generator=g).to(DEV, dtype)
                delta = (0.1 * torch.randn(b, dim, L, generator=g)).to(DEV, dtype)
                A = -torch.arange(1, N_STATE + 1, dtype=torch.float32).repeat(dim, 1).to(DEV)
                B = torch.randn(b, G, N_STATE, L, generator=g).to(DEV, dtype)
                C = torch.randn(b, G, N_STATE, L, generator=g).to(DEV, dtype)
                D = torch.ones(dim, device=DEV)
                bias = torch.full((dim,), -4.0, device=DEV)
                args = [u, delta, A, B, C, D, bias]
                dy = torch.randn(b, dim, L, device=DEV, dtype=dtype)
                y1, g1 = fwd_bwd(selective_scan_triton, args, dy)
                y2, g2 = fwd_bwd(mamba, args, dy)
                row["err y"] = rel(y1, y2)
                row["err grads (max over inputs)"] = max(rel(a, c) for a, c in zip(g1, g2))
                with torch.inference_mode():
                    row["ours fwd ms"] = time_ms(lambda: selective_scan_triton(*args), max_s=1.0)
                    row["mamba fwd ms"] = time_ms(lambda: mamba(*args), max_s=1.0)
                l1 = [a.detach().clone().requires_grad_() for a in args]
                row["ours fwd+bwd ms"] = time_ms(lambda: selective_scan_triton(*l1).backward(dy), max_s=1.0)
                row["mamba fwd+bwd ms"] = time_ms(lambda: mamba(*l1).backward(dy), max_s=1.0)
            except Exception as e:
                row.setdefault("err y", _err(e))
            s["rows"].append(row)
            log(f"mamba check {cname} {row['dtype']}: {row}")
            REPORT.write()
            peak_reset()


def _model_backends() -> list:
    from cmddcli.model.kernels import scan_mamba, scan_triton

    if not CUDA:  # the registry runs triton / mamba on CUDA only
        return ["torch"]
    names = []
    if scan_triton.available():
        names.append("triton")
    try:
        if scan_mamba.available():
            names.append("mamba")
    except Exception:
        pass
    return names or ["torch"]


def _forward_rows(s, label, net, sizes, backends, precisions=("fp32", "bf16", "fp16"), min_left=45):
    for H, W in sizes:
        for backend in backends:
            for prec in precisions:
                if left() < min_left:
                    s["notes"].append(f"stopped before {label} {H}x{W} {backend} {prec}: {left():.0f}s left")
                    return
                row = {"model": label, "size": f"{W}x{H}", "scan": backend, "precision": prec}
                try:
                    if backend:
                        set_scan(backend)
                    x = torch.rand(1, 3, H, W, device=DEV)
                    peak_reset()

                    def run():
                        with torch.inference_mode(), autocast(prec):
                            return net(x)

                    y = run()
                    row["finite"] = bool(torch.isfinite(y).all())
                    ms = time_ms(run, warmup=0, max_s=2.0, max_reps=10)
                    row["ms"] = ms
                    row["MP/s"] = H * W / 1e6 / (ms / 1e3)
                    row["peak GiB"] = peak_gib()
                    y = x = None  # free device memory
                except Exception as e:
                    row["ms"] = _err(e)
                s["rows"].append(row)
                log(f"forward {label} {W}x{H} {backend} {prec}: {row.get('ms')}")
                REPORT.write()
                peak_reset()


def sec_model_forward(sizes, key_suffix=""):
    from cmddcli.model import CMDDNet, model_config

    cols = ["model", "size", "scan", "precision", "ms", "MP/s", "peak GiB", "finite"]
    s = REPORT.section("model" + key_suffix, f"Whole-model forward, CMDDNet('{MODEL_PRESET}'), batch 1 "
                       f"({', '.join(f'{w}x{h}' for h, w in sizes)})", cols,
                       "Whole image, no tiling; bf16/fp16 = torch.autocast; peak = max_memory_allocated.")
    torch.manual_seed(0)
    net = CMDDNet(model_config(MODEL_PRESET)).to(DEV).eval()
    s["notes"].append(f"parameters: {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M")
    backends = _model_backends()
    if not key_suffix and "torch" not in backends:  # the torch fallback only at the smallest size
        _forward_rows(s, "CMDDNet", net, sizes[:1], ["torch"], precisions=("fp32",))
    _forward_rows(s, "CMDDNet", net, sizes, backends)
    net = None  # free device memory
    peak_reset()


def sec_train():
    from cmddcli.model import CMDDNet, model_config

    cols = ["size x batch", "scan", "precision", "it/s", "ms/it", "peak GiB", "loss finite"]
    s = REPORT.section("train", f"Training iterations, CMDDNet('{MODEL_PRESET}'): Adam, L1, backward, clip", cols,
                       "Adam(lr 3e-4, wd 1e-4), L1 loss, clip_grad_norm 0.01, random data; median step time.")
    backends = _model_backends()
    cases = [(sz, bs, be, pr) for sz, bs in TRAIN_CASES for be in backends for pr in ("fp32", "bf16")]
    if "torch" not in backends:  # the fallback, once
        cases += [(TRAIN_CASES[0][0], TRAIN_CASES[0][1], "torch", "fp32")]
    for size, batch, backend, prec in cases:
        if left() < 45:
            s["notes"].append(f"stopped before {size}x{batch} {backend} {prec}: {left():.0f}s left")
            return
        row = {"size x batch": f"{size}^2 x {batch}", "scan": backend, "precision": prec}
        try:
            set_scan(backend)
            torch.manual_seed(0)
            net = CMDDNet(model_config(MODEL_PRESET)).to(DEV).train()
            opt = torch.optim.Adam(net.parameters(), lr=3e-4, weight_decay=1e-4)
            x = torch.rand(batch, 3, size, size, device=DEV)
            t = torch.rand(batch, 3, size, size, device=DEV)
            losses = []

            def step():
                opt.zero_grad(set_to_none=True)
                with autocast(prec):
                    loss = F.l1_loss(net(x).float(), t)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 0.01)
                opt.step()
                losses.append(loss.detach())

            peak_reset()
            ms = time_ms(step, warmup=2, max_s=4.0, max_reps=20)
            row["ms/it"] = ms
            row["it/s"] = 1e3 / ms
            row["peak GiB"] = peak_gib()
            row["loss finite"] = bool(torch.isfinite(torch.stack(losses)).all())
            net = opt = x = t = losses = None  # free device memory
        except Exception as e:
            row["it/s"] = _err(e)
        s["rows"].append(row)
        log(f"train {size}x{batch} {backend} {prec}: {row.get('it/s')}")
        REPORT.write()
        peak_reset()


def sec_engine():
    from cmddcli.model import CMDDNet, model_config

    cols = ["image", "scan", "precision", "tile plan", "s", "MP/s", "peak GiB"]
    s = REPORT.section("engine", "Tile engine: Deblurrer.restore on a 24-megapixel photo", cols,
                       "Deblurrer(model=net, device='cuda', precision='bf16'), automatic tiles; one warm-up "
                       "restore of a 512x512 crop first; wall time includes host<->device copies.")
    try:
        from cmddcli.engine import Deblurrer
    except Exception as e:
        s["notes"].append("cmddcli.engine.Deblurrer not importable: " + _err(e)[7:])
        return
    H, W = PHOTO
    for backend in _model_backends():
        if left() < 60:
            s["notes"].append(f"stopped before {backend}: {left():.0f}s left")
            return
        row = {"image": f"{W}x{H} ({H * W / 1e6:.0f} MP)", "scan": backend, "precision": "bf16"}
        try:
            set_scan(backend)
            torch.manual_seed(0)
            net = CMDDNet(model_config(MODEL_PRESET))
            eng = Deblurrer(model=net, device=DEV.type, precision="bf16")
            img = np.random.default_rng(0).random((H, W, 3), dtype=np.float32)
            try:
                row["tile plan"] = "tile %s x batch %s" % eng.plan(H, W)
            except Exception as e:
                row["tile plan"] = _err(e)
            eng.restore(img[:512, :512])
            peak_reset()
            sync()
            t = time.perf_counter()
            out = eng.restore(img)
            sync()
            sec = time.perf_counter() - t
            row["s"] = sec
            row["MP/s"] = H * W / 1e6 / sec
            row["peak GiB"] = peak_gib()
            if out.shape != img.shape or not np.isfinite(out).all():
                row["s"] = f"bad output {out.shape}"
            eng = net = out = img = None  # free device memory
        except Exception as e:
            row["s"] = _err(e)
        s["rows"].append(row)
        log(f"engine {backend}: {row.get('s')}")
        REPORT.write()
        peak_reset()


def sec_restormer():
    cols = ["model", "size", "scan", "precision", "ms", "MP/s", "peak GiB", "finite"]
    s = REPORT.section("restormer", "Restormer-size comparison (random weights)", cols)
    torch.manual_seed(0)
    net = Restormer().to(DEV).eval()
    s["notes"].append(f"Restormer parameters: {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M "
                      "(published configuration: dim 48, blocks 4/6/6/8, refinement 4, heads 1/2/4/8, "
                      "FFN x2.66, no bias, WithBias LayerNorm; about 26.1 M)")
    _forward_rows(s, "Restormer", net, RESTORMER_SIZES, [""], min_left=40)
    net = None  # free device memory
    peak_reset()


# (BD channels, BL steps, warps, BNS states) per program; BNS < 16 splits the states over programs.
SWEEP = [(1, 64, 4, 16), (1, 128, 8, 16), (2, 32, 4, 16), (2, 64, 4, 16), (4, 16, 4, 16), (4, 32, 4, 16),
         (1, 128, 4, 4), (1, 256, 4, 4), (1, 64, 4, 8), (2, 64, 4, 8)]


def sec_sweep():
    """Triton block sizes (BD channels, BL steps, warps, BNS states) per level: the numbers to retune
    launch_config()."""
    from cmddcli.model.kernels import scan_triton

    cols = ["level", "BD,BL,warps,BNS", "fwd ms", "fwd+bwd ms"]
    s = REPORT.section("sweep", "Triton block-size sweep (fused cross scan, fp32, batch 1)", cols)
    if not scan_triton.available():
        s["notes"].append("triton unavailable: " + scan_triton.why_unavailable())
        return
    old = os.environ.get("CMDD_TRITON_SCAN")
    try:
        for lname, d, H, W in LEVELS:
            args = cross_inputs(1, d, H, W)
            dy = torch.randn(1, d, H * W, device=DEV)
            for cfg in (SWEEP[:2] if ARGS.smoke else SWEEP):
                if left() < 20:
                    s["notes"].append(f"stopped at {lname} {cfg}: {left():.0f}s left")
                    return
                row = {"level": lname, "BD,BL,warps,BNS": ",".join(map(str, cfg))}
                os.environ["CMDD_TRITON_SCAN"] = ",".join(map(str, cfg))
                try:
                    with torch.inference_mode():
                        row["fwd ms"] = time_ms(lambda: scan_triton.cross_scan_triton(*args, H, W), max_s=0.5)
                    leaves = [a.detach().clone().requires_grad_() for a in args]
                    row["fwd+bwd ms"] = time_ms(lambda: scan_triton.cross_scan_triton(*leaves, H, W).backward(dy),
                                                max_s=0.5)
                except Exception as e:
                    row["fwd ms"] = _err(e)
                s["rows"].append(row)
                REPORT.write()
            best = [r for r in s["rows"] if r["level"] == lname and isinstance(r.get("fwd+bwd ms"), float)]
            if best:
                b = min(best, key=lambda r: r["fwd+bwd ms"])
                s["notes"].append(f"{lname}: fastest fwd+bwd with BD,BL,warps,BNS = {b['BD,BL,warps,BNS']}")
    finally:
        if old is None:
            os.environ.pop("CMDD_TRITON_SCAN", None)
        else:
            os.environ["CMDD_TRITON_SCAN"] = old


def sec_kernels():
    """Registers, spills and shared memory of every Triton scan kernel compiled in this run."""
    from cmddcli.model.kernels import scan_triton

    cols = ["kernel", "constexprs", "warps", "regs", "spills", "shared B"]
    s = REPORT.section("kernels", "Compiled Triton scan kernels (from this run's cache)", cols,
                       "regs = registers per thread; spills > 0 means local-memory traffic.")
    if not CUDA:
        s["notes"].append("no compiled kernels on CPU (the interpreter runs them)")
        return
    for ker in scan_triton._kernels():
        for entry in (getattr(ker, "device_caches", None) or {}).values():
            cache = entry[0] if isinstance(entry, tuple) else entry
            for ck in list(getattr(cache, "values", lambda: [])()):
                md = getattr(ck, "metadata", None)
                consts = getattr(getattr(ck, "src", None), "constants", None)
                if isinstance(consts, dict):
                    names = getattr(ker, "arg_names", [])

                    def _name(k):
                        i = k[0] if isinstance(k, tuple) and k else k
                        return names[i] if isinstance(i, int) and i < len(names) else str(k)

                    consts = ", ".join(f"{_name(k)}={v}" for k, v in consts.items()
                                       if _name(k).isupper() or _name(k) in ("BD", "BN", "BL"))
                s["rows"].append({
                    "kernel": getattr(ck, "name", getattr(ker, "__name__", "?")),
                    "constexprs": str(consts)[:160],
                    "warps": getattr(md, "num_warps", "?"),
                    "regs": getattr(ck, "n_regs", "?"),
                    "spills": getattr(ck, "n_spills", "?"),
                    "shared B": getattr(md, "shared", "?"),
                })


# ----------------------------------------------------------------------------------------------
# Restormer (Zamir et al., CVPR 2022), compact re-implementation of the published configuration
# ----------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------
SECTIONS = [
    # key, function, seconds it needs at least to be worth starting
    ("scan", sec_scan, 60),
    ("mamba", sec_mamba_check, 30),
    ("model", lambda: sec_model_forward(MODEL_SIZES[:1]), 40),
    ("train", sec_train, 60),
    ("model-large", lambda: sec_model_forward(MODEL_SIZES[1:], key_suffix="-large"), 60),
    ("engine", sec_engine, 60),
    ("restormer", sec_restormer, 40),
    ("sweep", sec_sweep, 30),
    ("kernels", sec_kernels, 0),
]


def main() -> int:
    only = {k for k in ARGS.only.split(",") if k}
    sec_env()
    REPORT.write()
    skipped = []
    for key, fn, need in SECTIONS:
        if only and key not in only:
            continue
        if left() < need:
            skipped.append(f"{key} ({left():.0f}s left, needs {need}s)")
            continue
        log(f"section {key}")
        try:
            fn()
        except Exception as e:
            traceback.print_exc()
            s = REPORT.section(key, f"{key}: failed", ["error"])
            s["rows"].append({"error": _err(e)})
        finally:
            os.environ.pop("CMDD_SCAN", None)
            peak_reset()
            REPORT.write()
    if skipped:
        REPORT.env["skipped for time"] = ", ".join(skipped)
    REPORT.env["total s"] = round(time.perf_counter() - T0, 1)
    REPORT.write()
    print((REPORT.out / "gpu_results.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
