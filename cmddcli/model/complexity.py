"""Parameter and MAC counting.

``count_macs()['thop']`` follows thop 0.1.1's conventions (what papers report): convolutions
``out_numel * in/groups * k*k`` (bias not counted), linears ``out_numel * in_features``,
normalisation layers ``2 * numel`` (doubled when affine); the SSM einsums and the scan are not
nn.Modules and so are not counted. ``['full']`` adds them: the x_proj / dt_proj einsums and the
scan counted as VMamba's ``flops_selective_scan_fn`` does (9 per state update, plus the D term).
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn as nn

from .blocks import SS2D, reference_path
from .ssm import K_DIRECTIONS


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_macs(m: nn.Conv2d, out: torch.Tensor) -> int:
    return out.numel() * m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)


def _norm_macs(m: nn.Module, inp: torch.Tensor) -> int:
    flops = 2 * inp.numel()
    if getattr(m, "affine", False) or getattr(m, "elementwise_affine", False):
        flops *= 2
    return flops


@torch.no_grad()
def count_macs(model: nn.Module, height: int = 256, width: int = 256) -> dict:
    """{'thop': MACs as thop counts them, 'ssm': the uncounted einsum + scan MACs, 'full': both}."""
    totals = {"thop": 0, "ssm": 0}
    hooks = []

    def conv_hook(m, inp, out):
        totals["thop"] += _conv_macs(m, out)

    def linear_hook(m, inp, out):
        totals["thop"] += out.numel() * m.in_features

    def norm_hook(m, inp, out):
        totals["thop"] += _norm_macs(m, inp[0])

    def ss2d_hook(m: SS2D, inp, out):
        Bsz, d, H, W = inp[0].shape
        L = Bsz * H * W
        K = K_DIRECTIONS
        x_proj = L * K * (m.R + 2 * m.N) * d
        dt_proj = L * K * d * m.R
        scan = 9 * L * K * d * m.N + L * K * d
        totals["ssm"] += x_proj + dt_proj + scan

    # Shapes are all that matter: run a copy on the meta device (no arithmetic, any input size).
    meta = copy.deepcopy(model).to("meta").eval()
    for mod in meta.modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook))
        elif isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm)):
            hooks.append(mod.register_forward_hook(norm_hook))
        elif isinstance(mod, SS2D):
            hooks.append(mod.register_forward_hook(ss2d_hook))
    prev = os.environ.get("CMDD_SCAN")
    os.environ["CMDD_SCAN"] = "torch"
    try:
        with reference_path():  # the module-by-module path (the fast path calls F.* with fused weights)
            meta(torch.zeros(1, 3, height, width, device="meta"))
    finally:
        if prev is None:
            os.environ.pop("CMDD_SCAN", None)
        else:
            os.environ["CMDD_SCAN"] = prev
    totals["full"] = totals["thop"] + totals["ssm"]
    return totals
