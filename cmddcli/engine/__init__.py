"""Inference engine: one `Deblurrer` owns weights, device, precision and tiling (deblurrer.py, tiling.py),
with the anti-ringing clamp its weights' card may name (antiring.py); strength / focus / masks on top
of it (blend.py, blurmap.py, strength.py); the file batch behind
``cmdd deblur``: its inputs (inputs.py), options (batch_options.py), results (results.py), resume records
(resume.py) and the batch itself (runner.py), with its HTML report (report.py); forward-time benchmarks (bench.py);
``cmdd info``'s facts (info.py).

Names are resolved lazily, so importing a torch-free submodule (``options``, ``tiling``) does not
load torch.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "AntiRing": "antiring", "Deblurrer": "deblurrer", "is_oom": "deblurrer", "resolve_precision": "deblurrer",
    "DEFAULT_OVERLAP": "options", "PRECISIONS": "options",
    "Tile": "tiling", "axis_windows": "tiling", "plan_axis": "tiling", "plan_tiles": "tiling",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
