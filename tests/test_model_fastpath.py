"""The layout-stable fast path (default) against the plain reference path of cmddcli.model.blocks.

Tolerances: fp32 outputs within 1e-4 of the output's scale (max |ref - input|, the residual the
network adds), gradients within 1e-4 of each gradient's scale; bf16 autocast within 2e-2 of scale.
Every preset is checked at a small width with random (non-identity) weights and randomised
batch-norm statistics, so that the folded batch norms are really exercised.
"""

import pytest
import torch

from cmddcli.model import PRESETS, CMDDNet, model_config
from cmddcli.model.blocks import fast_path_enabled, reference_path


def _net(name: str, seed: int = 0) -> CMDDNet:
    cfg = model_config(name)
    if cfg.width > 16:
        cfg = model_config(name, width=8, blocks=(1, 1, 1, 2, 1, 1, 1, 1), d_state=4)
    torch.manual_seed(seed)
    net = CMDDNet(cfg)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
        net.output.weight.normal_(0, 0.05)  # non-identity
        for blk in net.modules():
            if hasattr(blk, "skip_scale"):
                blk.skip_scale.uniform_(0.5, 1.5)
    return net


def _scale(y, x):
    return (y - x).abs().max().item()


def test_reference_path_switch_restores():
    assert fast_path_enabled()
    with reference_path():
        assert not fast_path_enabled()
        with reference_path(False):
            assert fast_path_enabled()
        assert not fast_path_enabled()
    assert fast_path_enabled()


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("shape", [(1, 3, 24, 40), (2, 3, 17, 23)])
def test_eval_outputs_match_reference(name, shape):
    net = _net(name).eval()
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with reference_path():
            ref = net(x)
        fast = net(x)
    assert fast.shape == ref.shape and fast.is_contiguous()
    scale = _scale(ref, x)
    assert scale > 1e-3  # the network really changes the input
    assert (fast - ref).abs().max().item() <= 1e-4 * scale


@pytest.mark.parametrize("name", ["small", "paper", "mamba_only", "paper_mul"])
def test_training_gradients_match_reference(name):
    x = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(2))
    target = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(3))
    grads = {}
    for mode in ("ref", "fast"):
        net = _net(name).train()
        with reference_path(mode == "ref"):
            loss = (net(x) - target).abs().mean()
            loss.backward()
        grads[mode] = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    assert grads["ref"].keys() == grads["fast"].keys() and grads["ref"]
    for n, g in grads["ref"].items():
        scale = g.abs().max().item()
        if scale == 0:
            continue
        assert (grads["fast"][n] - g).abs().max().item() <= 1e-4 * scale + 1e-9, n


def test_eval_with_grad_enabled_matches_no_grad():
    # the in-place shortcuts are only taken without autograd; with autograd on, same numbers
    net = _net("small").eval()
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    y1 = net(x)
    y1.sum().backward()
    with torch.no_grad():
        y0 = net(x)
    assert (y1.detach() - y0).abs().max().item() <= 1e-5 * _scale(y0, x.detach())
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bf16_autocast_close_to_fp32():
    net = _net("small").eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y32 = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = net(x).float()
    assert (y16 - y32).abs().max().item() <= 2e-2 * max(_scale(y32, x), 1e-2)


def test_fast_inference_uses_the_token_major_scan(monkeypatch):
    # On CPU with the compiled kernel, the fast eval path never leaves channels-last: every SS2D
    # call goes through the token-major kernel (and the outputs match the reference, tested above).
    from cmddcli.model.kernels import scan_cpu

    if not scan_cpu.available():
        pytest.skip(f"cpu scan kernel unavailable: {scan_cpu.why_unavailable()}")
    calls = []
    real = scan_cpu.cross_scan_tokens_cpu
    monkeypatch.setattr(scan_cpu, "cross_scan_tokens_cpu", lambda *a, **k: calls.append(1) or real(*a, **k))
    net = _net("small").eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        net(x)
    n_ss2d = sum(1 for m in net.modules() if type(m).__name__ == "SS2D")
    assert len(calls) == n_ss2d > 0
    calls.clear()
    with torch.no_grad(), reference_path():
        net(x)
    assert not calls
