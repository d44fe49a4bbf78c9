"""`Deblurrer`: the one inference object. It owns the network, the device, the precision and the
tiling; `restore` / `restore_tensor` are its entry points and keep no per-call state on ``self``.

Whole-image inference is used when the image fits; otherwise the image is cut into overlapping
tiles (see :mod:`cmddcli.engine.tiling`) whose outputs are cross-faded with Hann ramps after a
context margin is dropped at every inner tile edge.

Exactness: for a network with a bounded receptive field of radius ``r`` the tiled result equals the
whole-image result (to float rounding) when ``margin >= r``. CMDDNet is not such a network: its
SS2D (Mamba) scans run over the whole feature map, so every output pixel depends on every input
pixel and a tile can only approximate the whole-image result. The Hann blend keeps that difference
smooth (no measurable seam); its size is quoted in tests/test_engine_cmddnet.py. Use ``tile=0`` for
bit-for-bit whole-image inference when memory allows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from ..errors import CmddError, WeightsError
from .. import runtime
from ..runtime import resolve_device, tune_cpu_allocator
from .antiring import AntiRing, resolve_antiring
from .options import DEFAULT_OVERLAP, PRECISIONS, tile_overlap_problem
from .tiling import Tile, default_margin, plan_axis, plan_tiles

log = logging.getLogger(__name__)

TileProgress = Callable[[int, int], None]  # (tiles done, tiles total)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

CPU_PIXEL_BUDGET = 512 * 512  # CPU: whole image up to this many pixels, else tiles of sqrt(budget) (benchmarks/RESULTS.md: 512² tiles give the best MP/s under ~1 GB)
MIN_TILE = 32  # OOM halving stops here
MAX_AUTO_TILE = 2048  # CUDA: auto tiles stop growing here (more tiles per batch instead)
MAX_BATCH_TILES = 16
CUDA_MEMORY_FRACTION = 0.6  # share of the free device memory the auto tile size plans to use


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error: ``torch.OutOfMemoryError``, its RuntimeError form, CPU
    allocation failures (torch's ``DefaultCPUAllocator: can't allocate memory``) and MemoryError."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if (oom_type and isinstance(exc, oom_type)) or isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 convolutions/GEMMs natively here (AVX512-BF16 or AMX); elsewhere
    bf16 on CPU is emulated and slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA devices that support it, else fp16 on CUDA; on CPU bf16 where the CPU
    has native bf16 (AVX512-BF16/AMX), else fp32.

    The CPU bf16 default is backed by benchmarks/bf16_check.md: with the shipped weights the bf16
    output is >= 61.9 dB PSNR from the fp32 output on every real photo in the samples (the rule is
    >= 50 dB); the selective scan itself always runs in fp32."""
    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise CmddError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if p == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return p


class Deblurrer:
    """Restore defocused images with CMDDNet (or any (B, 3, H, W) -> (B, 3, H, W) module).

    Args:
        weights: a safetensors file written by ``cmddcli.model.weights.save_weights``. ``None``
            loads the shipped weights (``default_weights_path()``); a missing file is a WeightsError.
        model: an ``nn.Module`` to use instead of loading weights (tests, evaluation of a model in
            memory). It is put in eval mode and moved to ``device``; its parameters are left alone
            (inference runs under ``torch.no_grad``). Input in [0, 1]; output is clamped here.
        device: 'auto', 'cpu', 'cuda' or 'cuda:N'.
        precision: 'auto' (bf16 on CUDA where supported, else fp16; on CPU bf16 where the CPU has
            native bf16, else fp32), 'fp32', 'bf16'
            or 'fp16'. Reduced precision runs under autocast; a tile whose output is not finite is
            recomputed in fp32.
        tile: network input size in pixels. ``None``: chosen from free memory (CUDA) or a pixel
            budget (CPU); ``0``: always the whole image. Halved automatically on out-of-memory.
        overlap: minimum overlap between neighbouring tiles (pixels).
        margin: context pixels dropped at inner tile edges; default ``3 * overlap // 8``.
        batch_tiles: tiles per forward pass; ``None``: from free memory (CUDA) or 1 (CPU).
        cpu_pixel_budget: on CPU, whole-image inference up to this many pixels.
        threads: CPU threads for torch (default: all cores this process may use).
        antiring: the anti-ringing clamp after the network (:mod:`cmddcli.engine.antiring`):
            ``"card"`` (default: the setting the weights' card names, none if it names none, none
            for a ``model`` passed in), ``"off"`` / None, ``"W,M"`` or an :class:`AntiRing`.

    Raises:
        CmddError: bad tile / overlap / margin / batch_tiles / antiring, an unknown or absent device;
        WeightsError: weights missing or unreadable (or a card's anti-ringing entry);
        BackendUnavailable: the scan backend forced by ``CMDD_SCAN`` (``--scan``) does not run on this device.
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        model: Optional[nn.Module] = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        tile: Optional[int] = None,
        overlap: int = DEFAULT_OVERLAP,
        margin: Optional[int] = None,
        batch_tiles: Optional[int] = None,
        cpu_pixel_budget: int = CPU_PIXEL_BUDGET,
        threads: Optional[int] = None,
        antiring: str | AntiRing | None = "card",
    ):
        problem = tile_overlap_problem(tile, overlap)
        if problem:
            raise CmddError(problem)
        if margin is not None and not 0 <= 2 * margin < max(overlap, 1):
            raise CmddError(f"margin must satisfy 0 <= 2 * margin < overlap, got margin {margin}, overlap {overlap}")
        if batch_tiles is not None and batch_tiles < 1:
            raise CmddError(f"batch_tiles must be >= 1, got {batch_tiles}")

        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, threads or runtime.available_cores()))
            tune_cpu_allocator()

        self.metadata: dict = {}
        if model is None:
            model, self.metadata, self.weights_path = _load_model(weights)
        else:
            self.weights_path = None
        self.antiring: Optional[AntiRing] = resolve_antiring(antiring, self.metadata, self.weights_path or "model")
        self.model = model.eval().to(self.device)  # a module passed in is put in eval mode and moved
        from ..model import ssm
        from ..model.blocks import SS2D

        if any(isinstance(m, SS2D) for m in self.model.modules()):
            # A CMDD_SCAN / --scan backend that cannot run here fails now, once, not once per photo.
            ssm.choose_backend(self.device.type, needs_grad=False)

        self.tile = tile
        self.overlap = int(overlap)
        self.margin = margin
        self.batch_tiles = batch_tiles
        self.cpu_pixel_budget = int(cpu_pixel_budget)
        # Tile starts are multiples of the network's padding multiple, so a tile's downsampling grid
        # lines up with the whole image's.
        config = getattr(self.model, "config", None)
        self.align = int(getattr(config, "pad_multiple", 1) or 1)
        self._bytes_per_pixel: dict[str, float] = {}  # memoised activation-memory probe (per precision)
        log.info("engine: device %s, precision %s, tile %s, overlap %d", self.device, self.precision,
                 "auto" if tile is None else (tile or "whole image"), self.overlap)

    # ------------------------------------------------------------------ public entry points

    def describe(self) -> dict:
        """Settings as a JSON-able dict (for run summaries)."""
        return {
            "weights": str(self.weights_path) if self.weights_path else None,
            "preset": self.metadata.get("preset"),
            "device": str(self.device),
            "precision": self.precision,
            "tile": "auto" if self.tile is None else self.tile,
            "overlap": self.overlap,
            "margin": self._margin(),
            "batch_tiles": "auto" if self.batch_tiles is None else self.batch_tiles,
            "antiring": self.antiring.describe() if self.antiring else "off",
        }

    def restore(self, image: np.ndarray, progress: Optional[TileProgress] = None) -> np.ndarray:
        """Deblur one image: (H, W, 3) float32 in [0, 1] -> (H, W, 3) float32 in [0, 1]."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
        y = self.restore_tensor(x, progress=progress)  # (1, 3, H, W)
        return y[0].permute(1, 2, 0).contiguous().numpy()

    def restore_tensor(self, x: torch.Tensor, progress: Optional[TileProgress] = None) -> torch.Tensor:
        """Deblur (B, 3, H, W) in [0, 1] (any device). Returns float32 (B, 3, H, W) on x's device:
        the network's output (tiles stitched), then the anti-ringing clamp if set, then clamped to [0, 1]."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        outs = [self._restore_one(x[b : b + 1].float(), progress) for b in range(x.shape[0])]
        y = torch.cat(outs, 0)
        if self.antiring is not None:
            y = self.antiring.apply(y, x.float())
        return y.clamp_(0.0, 1.0)

    # ------------------------------------------------------------------ planning

    def _margin(self) -> int:
        return default_margin(self.overlap) if self.margin is None else self.margin

    def plan(self, height: int, width: int) -> tuple[int, int]:
        """(tile, batch_tiles) the engine would start with for an image of this size.

        ``tile >= max(height, width)`` means whole-image inference.
        """
        whole = max(height, width)
        if self.tile == 0:
            return whole, 1
        if self.tile is not None:
            tile = min(self.tile, whole)
            return tile, self.batch_tiles or (1 if self.device.type == "cpu" else self._auto_batch(tile))
        if self.device.type == "cpu":
            if height * width <= self.cpu_pixel_budget:
                return whole, 1
            target = max(MIN_TILE, _floor_to(int(math.isqrt(self.cpu_pixel_budget)), self.align))
            return min(self._fit_tile(height, width, target), whole), self.batch_tiles or 1
        pixels = self._cuda_pixel_capacity()
        if height * width <= pixels:
            return whole, 1
        tile = max(MIN_TILE, min(MAX_AUTO_TILE, _floor_to(int(math.isqrt(max(pixels, 1))), self.align)))
        return min(tile, whole), self.batch_tiles or self._auto_batch(tile)

    def _fit_tile(self, height: int, width: int, target: int) -> int:
        """The tile size within [3/4, 5/4] of ``target`` that processes the fewest pixels in all.

        CPU cost is linear in the pixels the network sees, and a fixed tile can waste a whole extra
        row of tiles (1024 px with 512-px tiles and 64 px overlap needs 3 tiles per axis, 552-px
        tiles need 2). Ties go to the smaller tile (less memory)."""
        overlap = min(self.overlap, target // 2)
        lo = max(MIN_TILE, _ceil_to(target * 3 // 4, self.align))
        hi = max(lo, _floor_to(target * 5 // 4, self.align))
        best, best_cost = target, None
        for t in range(lo, hi + 1, self.align):
            ov = min(overlap, t // 2)
            ny = plan_axis(height, t, ov, self.align)
            nx = plan_axis(width, t, ov, self.align)
            cost = sum(b - a for a, b in ny) * sum(b - a for a, b in nx)
            if best_cost is None or cost < best_cost:
                best, best_cost = t, cost
        return best

    def _cuda_pixel_capacity(self) -> int:
        free, _total = torch.cuda.mem_get_info(self.device)
        return int(free * CUDA_MEMORY_FRACTION / self._activation_bytes_per_pixel())

    def _auto_batch(self, tile: int) -> int:
        if self.device.type != "cuda":
            return 1
        return int(max(1, min(MAX_BATCH_TILES, self._cuda_pixel_capacity() // (tile * tile))))

    def _activation_bytes_per_pixel(self) -> float:
        """Peak CUDA bytes per input pixel of one forward pass, measured once on a 256x256 probe."""
        if self.precision not in self._bytes_per_pixel:
            side = 256
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            with torch.no_grad(), self._autocast(self.precision):
                self.model(torch.zeros(1, 3, side, side, device=self.device))
            peak = torch.cuda.max_memory_allocated(self.device) - base
            self._bytes_per_pixel[self.precision] = max(peak, 1) * 1.25 / (side * side)
            log.debug("engine: %.0f bytes per pixel (%s)", self._bytes_per_pixel[self.precision], self.precision)
        return self._bytes_per_pixel[self.precision]

    # ------------------------------------------------------------------ inference

    def _restore_one(self, x: torch.Tensor, progress: Optional[TileProgress]) -> torch.Tensor:
        """(1, 3, H, W) -> (1, 3, H, W) float32 on x's device, not yet clamped; halves on OOM."""
        H, W = x.shape[-2:]
        tile, batch = self.plan(H, W)
        while True:
            try:
                return self._run_tiles(x, tile, batch, progress)
            except Exception as e:  # noqa: BLE001 - only OOM is handled; everything else re-raised
                if not is_oom(e):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                old = (tile, batch)
                if batch > 1:
                    batch //= 2
                else:
                    tile = _ceil_to(math.ceil(min(tile, max(H, W)) / 2), self.align)
                    if tile < MIN_TILE or tile >= old[0]:
                        raise CmddError(
                            f"out of memory on {self.device} even with {old[0]}px tiles; "
                            "try a smaller --tile, --precision fp16/bf16 or --device cpu"
                        ) from e
                log.warning("engine: out of memory with %dpx tiles x %d per batch; retrying with %dpx x %d",
                            old[0], old[1], tile, batch)

    def _run_tiles(self, x: torch.Tensor, tile: int, batch: int, progress: Optional[TileProgress]) -> torch.Tensor:
        H, W = x.shape[-2:]
        if tile >= max(H, W):
            if progress:
                progress(0, 1)
            y = self._forward(x.to(self.device, non_blocking=True)).to(x.device)
            if progress:
                progress(1, 1)
            return y
        overlap = min(self.overlap, tile // 2)
        margin = min(self._margin(), max(0, (overlap - 1) // 2))
        tiles = plan_tiles(H, W, tile, overlap, margin, self.align)
        out = torch.zeros(1, 3, H, W, dtype=torch.float32, device=x.device)
        wsum = torch.zeros(1, 1, H, W, dtype=torch.float32, device=x.device)
        done = 0
        if progress:
            progress(0, len(tiles))
        for group in _batches(tiles, batch):
            xb = torch.cat([x[..., t.y0 : t.y1, t.x0 : t.x1] for t in group], 0)  # (n, 3, th, tw)
            yb = self._forward(xb.to(self.device, non_blocking=True)).to(x.device)
            for t, y in zip(group, yb):
                w = torch.from_numpy(t.weight()).to(x.device)  # (th, tw)
                out[0, :, t.y0 : t.y1, t.x0 : t.x1] += y * w
                wsum[0, 0, t.y0 : t.y1, t.x0 : t.x1] += w
            done += len(group)
            if progress:
                progress(done, len(tiles))
        return out / wsum

    def _autocast(self, precision: str):
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[precision])

    def _forward(self, xb: torch.Tensor) -> torch.Tensor:
        """One network pass over a batch of same-size tiles; non-finite tiles are redone in fp32."""
        with torch.no_grad():
            with self._autocast(self.precision):
                yb = self.model(xb)
            yb = yb.float()
            if self.precision != "fp32":
                bad = ~torch.isfinite(yb).flatten(1).all(1)  # (n,)
                if bool(bad.any()):
                    idx = bad.nonzero().flatten()
                    log.warning("engine: %d tile(s) gave non-finite values in %s; recomputing in fp32",
                                len(idx), self.precision)
                    yb[idx] = self.model(xb[idx]).float()
            if not bool(torch.isfinite(yb).all()):
                raise CmddError("the network produced non-finite values even in fp32 (bad weights?)")
        return yb


# ---------------------------------------------------------------------- helpers


def _load_model(weights) -> tuple[nn.Module, dict, Path]:
    from ..model.weights import load_weights, resolve_weights

    path = resolve_weights(weights)
    if not path.is_file():
        if weights is None:
            raise WeightsError(
                f"no shipped weights found at {path}; pass --weights FILE.safetensors "
                "(train one with `cmdd train`)"
            )
        raise WeightsError(f"weights file not found: {path}")
    model, meta = load_weights(path, map_location="cpu")
    return model, dict(meta or {}), path


def _batches(tiles: list[Tile], size: int):
    """Consecutive groups of up to ``size`` tiles that share one shape (so they stack)."""
    group: list[Tile] = []
    for t in tiles:
        if group and (len(group) == size or group[0].shape != t.shape):
            yield group
            group = []
        group.append(t)
    if group:
        yield group


def _floor_to(n: int, m: int) -> int:
    return n // m * m if n >= m else n


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m
