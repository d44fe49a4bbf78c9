"""Forward-pass benchmark: time per preset, input size and scan backend, split into scan and rest."""

from __future__ import annotations

import contextlib
import logging
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from ..model import CMDDNet, model_config
from ..model import blocks as _blocks
from ..model import ssm
from ..runtime import tune_cpu_allocator

log = logging.getLogger(__name__)


@dataclass
class BenchRow:
    """One timed configuration: preset, size (H, W), scan backend, seconds per forward (median) and the scan's share of it."""
    preset: str
    size: str
    device: str
    backend: str
    total_s: float
    scan_s: float
    rest_s: float
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _timed_scan(device: torch.device, backend: str, acc: list):
    """Route the model's cross scans through `backend` and add up the time spent inside them."""
    original = _blocks.cross_scan

    def timed(*args, **kwargs):
        _sync(device)
        t0 = time.perf_counter()
        out = original(*args, backend=backend)
        _sync(device)
        acc.append(time.perf_counter() - t0)
        return out

    _blocks.cross_scan = timed
    try:
        yield
    finally:
        _blocks.cross_scan = original


def usable_backends(device: torch.device) -> list:
    """Inference backends that run on this device, fastest-first as `choose_backend` would try them."""
    names = []
    for name, ok, _diff, devices, _why in ssm.backend_status():
        if ok and device.type in devices and name != "ref":
            names.append(name)
    return names


@torch.no_grad()
def bench_forward(preset: str, sizes: list, device: str = "cpu", backends=None, repeats: int = 3, warmup: int = 1) -> list:
    """Time whole-model forwards of ``preset`` at each (H, W) in ``sizes`` on ``device``, once per scan
    backend (default: every backend usable there); ``repeats`` timed runs after ``warmup``, median
    reported. Returns one :class:`BenchRow` per (size, backend). Raises CmddError for a bad device."""
    dev = torch.device(device)
    if dev.type == "cpu":
        tune_cpu_allocator()
    net = CMDDNet(model_config(preset)).to(dev).eval()
    rows = []
    for backend in backends or usable_backends(dev):
        for (h, w) in sizes:
            x = torch.rand(1, 3, h, w, device=dev)
            totals, scans = [], []
            try:
                for i in range(warmup + repeats):
                    acc: list = []
                    with _timed_scan(dev, backend, acc):
                        _sync(dev)
                        t0 = time.perf_counter()
                        net(x)
                        _sync(dev)
                        dt = time.perf_counter() - t0
                    if i >= warmup:
                        totals.append(dt)
                        scans.append(sum(acc))
            except Exception as e:  # recorded in the table, never hidden
                rows.append(BenchRow(preset, f"{h}x{w}", dev.type, backend, float("nan"), float("nan"), float("nan"), f"failed: {e}"))
                continue
            t, s = statistics.median(totals), statistics.median(scans)
            rows.append(BenchRow(preset, f"{h}x{w}", dev.type, backend, t, s, t - s))
            log.info("%s %dx%d %s: %.3f s (scan %.3f s)", preset, h, w, backend, t, s)
    return rows


def machine_line(device: str = "cpu") -> str:
    """One line naming the machine (CPU model and cores, or the CUDA device) and torch version."""
    if device.startswith("cuda") and torch.cuda.is_available():
        what = torch.cuda.get_device_name(torch.device(device))
    else:
        what = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"{what}; torch {torch.__version__}; Python {platform.python_version()}"


def rows_to_markdown(rows: list) -> str:
    """The rows as a Markdown table (milliseconds per forward, scan share)."""
    lines = [
        "| preset | input | device | scan backend | forward s | scan s | rest s | note |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.preset} | {r.size} | {r.device} | {r.backend} | {r.total_s:.3f} | {r.scan_s:.3f} | {r.rest_s:.3f} | {r.note} |"
        )
    return "\n".join(lines)
