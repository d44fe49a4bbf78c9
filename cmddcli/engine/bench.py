"""Forward-pass benchmark: time per preset, input size and scan backend, split into scan and rest."""

from __future__ import annotations

import contextlib
import logging
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from ..errors import CmddError
from ..model import CMDDNet, model_config
from ..model import blocks as _blocks
from ..model import ssm
from ..runtime import resolve_device, tune_cpu_allocator

log = logging.getLogger(__name__)


@dataclass
class BenchRow:
    """One timed configuration: preset, size ("WxH", pixels), scan backend, seconds per forward (median) and the scan's share of it."""
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
    originals = {name: getattr(_blocks, name) for name in ("cross_scan", "cross_scan_tokens")}

    def timer(fn):
        def timed(*args, **kwargs):
            _sync(device)
            t0 = time.perf_counter()
            out = fn(*args, backend=backend)
            _sync(device)
            acc.append(time.perf_counter() - t0)
            return out

        return timed

    for name, fn in originals.items():  # the block calls one or the other, by layout
        setattr(_blocks, name, timer(fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(_blocks, name, fn)


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
    reported; backend ``auto`` is the one inference would choose. Returns one :class:`BenchRow` per
    (size, backend); a backend that fails at run time is a row saying why. Raises CmddError for a
    bad or absent device, a backend name that does not exist, or repeats < 1."""
    for b in backends or []:
        ssm.check_backend_name(b)
    if repeats < 1:
        raise CmddError(f"repeats must be at least 1, got {repeats}")
    dev = resolve_device(device)
    # "auto": the backend deblur would pick on this device (CMDD_SCAN / --scan honoured)
    backends = [ssm.choose_backend(dev.type, needs_grad=False).name if b == "auto" else b for b in backends or []]
    backends = list(dict.fromkeys(backends))  # "cpu,auto" where auto is cpu: one row, not two
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
                rows.append(BenchRow(preset, f"{w}x{h}", dev.type, backend, float("nan"), float("nan"), float("nan"), f"failed: {e}"))
                continue
            t, s = statistics.median(totals), statistics.median(scans)
            rows.append(BenchRow(preset, f"{w}x{h}", dev.type, backend, t, s, t - s))
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


# ---------------------------------------------------------------------- one photo, end to end


@dataclass
class PhotoBenchRow:
    """``cmdd deblur`` of one generated JPEG: size (W x H), wall seconds of the whole command
    (start-up, decode, network, encode), its peak resident memory (MiB), and the engine settings
    it reported (precision, tile, the weights file's name)."""

    size: str
    megapixels: float
    seconds: float
    peak_mib: float
    precision: str
    tile: str
    weights: str = ""


def make_test_photo(path, width: int, height: int, seed: int = 0) -> None:
    """Write a ``width x height`` JPEG (quality 92) of smooth colour plus fine texture: content does
    not change the network's speed, only the encoder's a little."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.random((max(2, height // 64), max(2, width // 64), 3)).astype(np.float32)
    base = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC),
                      dtype=np.float32)
    texture = rng.normal(0, 12, (height, width, 1)).astype(np.float32)
    Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8)).save(path, quality=92)


def bench_photo(width: int = 4000, height: int = 3000, weights=None, args: tuple = ()) -> PhotoBenchRow:
    """Time ``cmdd deblur PHOTO -o OUT --json [args]`` on a generated JPEG in a child process, as a
    user runs it (default weights unless ``weights``). Peak memory is that child's own maximum
    resident set (``os.wait4``; Linux reports KiB). Raises CmddError if the command fails."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from ..errors import CmddError

    with tempfile.TemporaryDirectory(prefix="cmdd-bench-") as tmp:
        photo = Path(tmp) / f"photo_{width}x{height}.jpg"
        make_test_photo(photo, width, height)
        cmd = [sys.executable, "-m", "cmddcli", "deblur", str(photo), "-o", str(Path(tmp) / "out"), "--json", *args]
        if weights:
            cmd += ["--weights", str(weights)]
        err_path = Path(tmp) / "stderr.txt"
        with open(err_path, "w") as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
            stdout = p.stdout.read()
            _, status, usage = os.wait4(p.pid, 0)
            seconds = time.perf_counter() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
            p.stdout.close()
        if p.returncode != 0:
            last = (err_path.read_text().strip().splitlines() or ["?"])[-1]
            raise CmddError(f"cmdd deblur failed on the benchmark photo: {last}")
        engine = json.loads(stdout).get("settings", {}).get("engine", {})
    return PhotoBenchRow(f"{width}x{height}", width * height / 1e6, seconds, usage.ru_maxrss / 1024,
                         str(engine.get("precision")), str(engine.get("tile")), Path(engine.get("weights") or "").name)


def photo_rows_to_markdown(rows: list) -> str:
    lines = ["| photo | MP | seconds | MP/s | peak MiB | precision | tile | weights |",
             "|---|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.size} JPEG | {r.megapixels:.1f} | {r.seconds:.1f} | {r.megapixels / r.seconds:.3f} | "
                     f"{r.peak_mib:.0f} | {r.precision} | {r.tile} | {r.weights} |")
    return "\n".join(lines)
