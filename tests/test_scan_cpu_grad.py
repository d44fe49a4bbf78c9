"""Gradients of the compiled CPU scan (training kernels, csrc/scan_cpu_bwd.cpp) against autograd
through selective_scan_ref / cross_scan_ref run in float64 (gradcheck is not possible in float32)."""

from __future__ import annotations

import functools

import pytest
import torch

from cmddcli.model import ssm
from cmddcli.model.kernels import scan_cpu

AVAILABLE = scan_cpu.available() and scan_cpu.grad_available()
pytestmark = pytest.mark.skipif(
    not AVAILABLE, reason=f"cpu scan training kernels unavailable: {scan_cpu.why_unavailable() or scan_cpu._grad_state['reason']}"
)

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def _inputs(b, d, N, L, groups, seed, bias_shift=0.0, with_D=True, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, L, generator=g)
    delta = torch.randn(b, d, L, generator=g) * 0.5
    A = -torch.rand(d, N, generator=g) * 4 - 0.1
    B = torch.randn(b, groups, N, L, generator=g)
    C = torch.randn(b, groups, N, L, generator=g)
    D = torch.randn(d, generator=g) if with_D else None
    bias = (torch.randn(d, generator=g) * 0.5 + bias_shift) if with_bias else None
    return [u, delta, A, B, C, D, bias]


def _grads(fn, inputs, dtype, gy, **kw):
    xs = [None if t is None else t.to(dtype).clone().requires_grad_() for t in inputs]
    y = fn(*xs, **kw)
    (y * gy.to(dtype)).sum().backward()
    return y.detach(), [None if x is None else x.grad for x in xs]


def _check(y, grads, y_ref, grads_ref, tol=1e-3, names=NAMES):
    scale = y_ref.abs().max().clamp_min(1e-12)
    assert ((y.double() - y_ref).abs().max() / scale).item() <= tol
    for name, g, r in zip(names, grads, grads_ref):
        assert (g is None) == (r is None), name
        if g is None:
            continue
        assert g.dtype == torch.float32 and g.shape == r.shape, name
        err = ((g.double() - r).abs().max() / r.abs().max().clamp_min(1e-12)).item()
        assert err <= tol, f"grad {name}: relative error {err:.2e}"


CASES = [
    # (b, d, N, L, groups, kwargs)
    dict(b=2, d=6, N=16, L=130, groups=1),              # L not a multiple of T = 64
    dict(b=2, d=6, N=16, L=128, groups=3),              # groups > 1, L a multiple of T
    dict(b=1, d=3, N=16, L=1, groups=1),                # L = 1
    dict(b=2, d=4, N=5, L=70, groups=2),                # N padded to 16
    dict(b=1, d=5, N=20, L=200, groups=1),              # N padded to 32 (two vectors)
    dict(b=2, d=4, N=16, L=90, groups=1, with_D=False, with_bias=False),
    dict(b=2, d=4, N=16, L=90, groups=2, softplus=False),
    dict(b=2, d=4, N=16, L=90, groups=1, bias_shift=30.0),  # dt ~ 30: decays underflow
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_selective_scan_grads_match_ref(case):
    case = dict(case)
    softplus = case.pop("softplus", True)
    b, d, N, L, groups = (case.pop(k) for k in ("b", "d", "N", "L", "groups"))
    inputs = _inputs(b, d, N, L, groups, seed=L + N + groups, **case)
    if not softplus:  # dt must stay positive without the softplus
        inputs[1] = inputs[1].abs() + 0.05
        inputs[6] = None if inputs[6] is None else inputs[6].abs()
    gy = torch.randn(b, d, L, generator=torch.Generator().manual_seed(1))
    y, g = _grads(scan_cpu.selective_scan_cpu, inputs, torch.float32, gy, delta_softplus=softplus)
    y_ref, g_ref = _grads(ssm.selective_scan_ref, inputs, torch.float64, gy, delta_softplus=softplus)
    _check(y, g, y_ref, g_ref)


def test_selective_scan_partial_requires_grad_and_threads():
    inputs = _inputs(2, 8, 16, 100, 2, seed=3)
    gy = torch.randn(2, 8, 100)
    xs = [t.clone() for t in inputs]
    xs[1].requires_grad_()  # only delta
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # several slices per group: gB/gC partial buffers are summed
        y = scan_cpu.selective_scan_cpu(*xs)
        (y * gy).sum().backward()
    finally:
        torch.set_num_threads(prev)
    _, g_ref = _grads(ssm.selective_scan_ref, inputs, torch.float64, gy)
    err = ((xs[1].grad.double() - g_ref[1]).abs().max() / g_ref[1].abs().max()).item()
    assert err <= 1e-3
    assert all(x.grad is None for i, x in enumerate(xs) if i != 1)


def test_inference_path_unchanged():
    inputs = _inputs(2, 6, 16, 50, 1, seed=5)
    with torch.no_grad():
        y = scan_cpu.selective_scan_cpu(*[t.requires_grad_() for t in inputs])
    assert not y.requires_grad


def test_cross_scan_grads_match_ref():
    b, d, N, H, W, K = 2, 5, 16, 6, 9, 4
    L = H * W
    g = torch.Generator().manual_seed(7)
    u = torch.randn(b, d, L, generator=g)
    delta = torch.randn(b, K, d, L, generator=g) * 0.5
    A = -torch.rand(K * d, N, generator=g) * 4 - 0.1
    B = torch.randn(b, K, N, L, generator=g)
    C = torch.randn(b, K, N, L, generator=g)
    D = torch.randn(K * d, generator=g)
    bias = torch.randn(K * d, generator=g) * 0.5
    inputs = [u, delta, A, B, C, D, bias]
    gy = torch.randn(b, d, L, generator=g)
    y, gr = _grads(scan_cpu.cross_scan_cpu, inputs, torch.float32, gy, H=H, W=W)
    y_ref, gr_ref = _grads(ssm.cross_scan_ref, inputs, torch.float64, gy, H=H, W=W)
    _check(y, gr, y_ref, gr_ref)
    # The registry routes training to it too.
    assert ssm.choose_backend("cpu", needs_grad=True).name == "cpu"


@pytest.mark.parametrize(
    "b, d, H, W, N, R, pad",
    [
        (1, 16, 5, 7, 16, 1, 0),  # the `small` top level's shape (R = 1)
        (2, 20, 6, 9, 16, 2, 4),  # batch 2 (two channel slices per item on 2 threads), padded x rows
        (1, 16, 1, 12, 16, 1, 0),  # a single row
        (3, 8, 11, 13, 32, 3, 0),  # N = 32, R = 3
        (2, 20, 13, 11, 16, 1, 0),  # several 64-step checkpoint chunks, a partial 16-channel tile
        (1, 40, 9, 10, 16, 2, 0),  # batch 1: two slices of whole tiles (32 + 8 channels), 2 chunks
        (2, 12, 7, 6, 4, 1, 0),  # N = 4 (the `tiny` preset): groups of 4 states
        (1, 8, 4, 5, 6, 9, 0),  # N = 6 (groups of 1), R = 9 (two dt_low reduction groups)
    ],
)
def test_cross_scan_tokens_grads_match_ref(b, d, H, W, N, R, pad):
    # The token-major training kernels against float64 autograd through the permuting reference.
    K, L = 4, H * W
    g = torch.Generator().manual_seed(11)
    u = torch.randn(b, L, d, generator=g)
    x = torch.randn(b, L, K * (R + 2 * N) + pad, generator=g) * 0.5
    Wdt = torch.randn(K, d, R, generator=g) * 0.3
    A = -torch.exp(torch.randn(K * d, N, generator=g) * 0.5)
    D = torch.randn(K * d, generator=g)
    bias = torch.randn(K * d, generator=g) * 0.5 - 1.0
    inputs = [u, x, Wdt, A, D, bias]
    gy = torch.randn(b, L, d, generator=g)
    y, gr = _grads(scan_cpu.cross_scan_tokens_cpu, inputs, torch.float32, gy, H=H, W=W)
    y_ref, gr_ref = _grads(functools.partial(ssm.cross_scan_tokens_ref, backend="ref"), inputs, torch.float64, gy,
                           H=H, W=W)
    _check(y, gr, y_ref, gr_ref, tol=2e-4, names=("u", "x", "Wdt", "A", "D", "delta_bias"))
    if pad:  # the padded columns of x get exactly zero gradient
        assert torch.all(gr[1][..., K * (R + 2 * N):] == 0)


def test_cmddnet_training_step_cpu_matches_torch(monkeypatch):
    from _nets import random_net

    net = random_net("tiny")
    x = torch.rand(2, 3, 16, 16)
    target = torch.rand(2, 3, 16, 16)
    grads = {}
    for backend in ("torch", "cpu"):
        monkeypatch.setenv("CMDD_SCAN", backend)
        net.zero_grad(set_to_none=True)
        loss = (net(x) - target).abs().mean()
        loss.backward()
        grads[backend] = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    assert grads["torch"].keys() == grads["cpu"].keys() and grads["cpu"]
    for n, ref in grads["torch"].items():
        got = grads["cpu"][n]
        err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
        assert err <= 1e-3, f"{n}: {err:.2e}"
