"""Inference engine: one `Deblurrer` owns weights, device, precision and tiling (see deblurrer.py)."""

from .deblurrer import DEFAULT_OVERLAP, PRECISIONS, Deblurrer, is_oom, resolve_device, resolve_precision
from .tiling import Tile, axis_windows, plan_axis, plan_tiles

__all__ = [
    "Deblurrer",
    "DEFAULT_OVERLAP",
    "PRECISIONS",
    "Tile",
    "axis_windows",
    "is_oom",
    "plan_axis",
    "plan_tiles",
    "resolve_device",
    "resolve_precision",
]
