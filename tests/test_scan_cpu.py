"""The compiled CPU selective scan (cmddcli/model/kernels/scan_cpu.py) against selective_scan_ref / cross_scan_ref.

The kernel compiles on first use (a few seconds, then cached); without a working g++/ninja the
kernel tests skip with the reason and only the "fails cleanly" tests run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys

import pytest
import torch

from cmddcli.model.kernels import scan_cpu
from cmddcli.model.ssm import (
    choose_backend,
    cross_scan,
    cross_scan_ref,
    cross_scan_tokens,
    cross_scan_tokens_ref,
    selective_scan,
    selective_scan_ref,
    selective_scan_torch,
)

AVAILABLE = scan_cpu.available()
needs_kernel = pytest.mark.skipif(not AVAILABLE, reason=f"cpu scan kernel unavailable: {scan_cpu.why_unavailable()}")

REL_TOL = 1e-4  # max |y - y_ref| <= REL_TOL * max |y_ref|


@contextlib.contextmanager
def _one_thread():
    # The references are Python loops of tiny torch ops; with 2 intra-op threads on a busy machine
    # each op can wait milliseconds for a descheduled thread (measured: 11.6 s vs 0.04 s).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def scan_ref(*args, **kwargs):
    with _one_thread():
        return selective_scan_ref(*args, **kwargs)


def cross_ref(*args, **kwargs):
    with _one_thread():
        return cross_scan_ref(*args, **kwargs)


def _close(y, y_ref, rel=REL_TOL):
    assert y.shape == y_ref.shape
    assert torch.isfinite(y).all()
    err = (y.double() - y_ref.double()).abs().max().item()
    scale = y_ref.double().abs().max().item()
    assert err <= rel * max(scale, 1e-30), f"max abs error {err:.3g} > {rel} * max|y_ref| = {rel * scale:.3g}"


def _scan_inputs(g, b, dim, L, N, groups, bias_shift=0.0, positive_delta=False):
    u = torch.randn(b, dim, L, generator=g)
    delta = torch.randn(b, dim, L, generator=g) * 0.5 - 1.0
    if positive_delta:
        delta = delta.abs() * 0.2
    A = -torch.exp(torch.randn(dim, N, generator=g) * 0.5)
    B = torch.randn(b, groups, N, L, generator=g)
    C = torch.randn(b, groups, N, L, generator=g)
    D = torch.randn(dim, generator=g)
    bias = torch.randn(dim, generator=g) * 0.2 + bias_shift
    return u, delta, A, B, C, D, bias


def _cross_inputs(g, b, d, H, W, N, K=4, bias_shift=0.0):
    L = H * W
    u = torch.randn(b, d, L, generator=g)
    delta = torch.randn(b, K, d, L, generator=g) * 0.5 - 1.0
    A = -torch.exp(torch.randn(K * d, N, generator=g) * 0.5)
    B = torch.randn(b, K, N, L, generator=g)
    C = torch.randn(b, K, N, L, generator=g)
    D = torch.randn(K * d, generator=g)
    bias = torch.randn(K * d, generator=g) * 0.2 + bias_shift
    return u, delta, A, B, C, D, bias


# ----------------------------------------------------------------------------------------------
@needs_kernel
@pytest.mark.parametrize(
    "b,dim,L,N,groups",
    [
        (1, 4, 1, 16, 1),  # L = 1
        (2, 20, 37, 16, 1),  # odd L, a partial channel tile
        (2, 24, 129, 16, 4),  # groups > 1
        (1, 17, 300, 5, 1),  # N not a multiple of the vector width
        (1, 33, 600, 16, 3),  # a full 512-step block plus a remainder
        (3, 8, 16, 8, 2),
    ],
)
def test_selective_scan_matches_ref(rng, b, dim, L, N, groups):
    u, delta, A, B, C, D, bias = _scan_inputs(rng, b, dim, L, N, groups)
    y = scan_cpu.selective_scan_cpu(u, delta, A, B, C, D=D, delta_bias=bias)
    _close(y, scan_ref(u, delta, A, B, C, D=D, delta_bias=bias))


@needs_kernel
def test_selective_scan_options(rng):
    u, delta, A, B, C, D, bias = _scan_inputs(rng, 2, 12, 77, 16, 2, positive_delta=True)
    for kw in (
        {},  # no D, no bias
        {"D": D},
        {"delta_bias": bias},
        {"D": D, "delta_bias": bias, "delta_softplus": False},
        {"delta_softplus": False},
    ):
        y = scan_cpu.selective_scan_cpu(u, delta, A, B, C, **kw)
        _close(y, scan_ref(u, delta, A, B, C, **kw))


@needs_kernel
def test_selective_scan_large_dt_is_stable(rng):
    # dt ~ 30: exp(dt * A) underflows to 0 (state forgets at once); nothing may overflow.
    u, delta, A, B, C, D, bias = _scan_inputs(rng, 1, 16, 200, 16, 1, bias_shift=30.0)
    y = scan_cpu.selective_scan_cpu(u, delta, A, B, C, D=D, delta_bias=bias)
    _close(y, scan_ref(u, delta, A, B, C, D=D, delta_bias=bias))
    # dt * A far below float's exp range, without softplus.
    y = scan_cpu.selective_scan_cpu(u, delta.abs() * 50, A * 20, B, C, D=D, delta_softplus=False)
    _close(y, scan_ref(u, delta.abs() * 50, A * 20, B, C, D=D, delta_softplus=False))
    # A positive A (a growing state; the kernel then also clamps dt * A from above).
    A2 = A.clone()
    A2[:4, 0] = 0.01
    y = scan_cpu.selective_scan_cpu(u, delta, A2, B, C, D=D, delta_bias=bias)
    _close(y, scan_ref(u, delta, A2, B, C, D=D, delta_bias=bias))


@needs_kernel
def test_selective_scan_long_memory(rng):
    # Small dt (about 1e-3): the state integrates over thousands of steps, so a biased exp would show.
    u, delta, A, B, C, D, bias = _scan_inputs(rng, 1, 16, 1500, 16, 1, bias_shift=-7.0)
    A = -torch.arange(1, 17, dtype=torch.float32).repeat(16, 1) * torch.rand(16, 1, generator=rng)
    y = scan_cpu.selective_scan_cpu(u, delta, A, B, C, D=D, delta_bias=bias)
    _close(y, scan_ref(u, delta, A, B, C, D=D, delta_bias=bias))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_selective_scan_dtypes(rng, dtype):
    u, delta, A, B, C, D, bias = _scan_inputs(rng, 1, 8, 50, 16, 1)
    args = [t.to(dtype) for t in (u, delta, A, B, C)]
    y = scan_cpu.selective_scan_cpu(*args, D=D.to(dtype), delta_bias=bias.to(dtype))
    assert y.dtype == dtype
    y_ref = scan_ref(*args, D=D.to(dtype), delta_bias=bias.to(dtype))
    _close(y.float(), y_ref.float(), rel=2e-2 if dtype in (torch.bfloat16, torch.float16) else REL_TOL)


@needs_kernel
def test_selective_scan_noncontiguous_inputs(rng):
    u, delta, A, B, C, D, bias = _scan_inputs(rng, 2, 16, 40, 16, 1)
    ut = u.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    y = scan_cpu.selective_scan_cpu(ut, delta, A.t().contiguous().t(), B, C, D=D, delta_bias=bias)
    _close(y, scan_ref(u, delta, A, B, C, D=D, delta_bias=bias))


# ----------------------------------------------------------------------------------------------
@needs_kernel
@pytest.mark.parametrize(
    "b,d,H,W,N",
    [
        (2, 20, 5, 7, 16),  # small map, partial channel tile, batch > 1
        (1, 16, 1, 9, 16),  # H = 1
        (1, 16, 8, 1, 16),  # W = 1
        (1, 1, 1, 1, 16),  # a single pixel
        (1, 40, 21, 35, 16),  # column strips (fast path) plus a partial strip, odd sizes
        (2, 12, 9, 40, 5),  # N not a multiple of the vector width
        (1, 24, 20, 17, 16),
    ],
)
def test_cross_scan_matches_ref(rng, b, d, H, W, N):
    u, delta, A, B, C, D, bias = _cross_inputs(rng, b, d, H, W, N)
    y = scan_cpu.cross_scan_cpu(u, delta, A, B, C, D, bias, H, W)
    _close(y, cross_ref(u, delta, A, B, C, D, bias, H, W))


@needs_kernel
def test_cross_scan_options_and_large_bias(rng):
    u, delta, A, B, C, D, bias = _cross_inputs(rng, 1, 10, 9, 11, 16, bias_shift=30.0)
    for D_, bias_ in ((D, bias), (None, bias), (D, None), (None, None)):
        y = scan_cpu.cross_scan_cpu(u, delta, A, B, C, D_, bias_, 9, 11)
        _close(y, cross_ref(u, delta, A, B, C, D_, bias_, 9, 11))


@needs_kernel
def test_cross_scan_tall_map_generic_path(rng):
    # A tall map: column strips longer than the fast path's buffer go element by element.
    # Reference: the (tested) chunked torch scan, as the Python loop would be slow at L = 36900.
    u, delta, A, B, C, D, bias = _cross_inputs(rng, 1, 3, 2050, 18, 16)
    y = scan_cpu.cross_scan_cpu(u, delta, A, B, C, D, bias, 2050, 18)
    _close(y, cross_ref(u, delta, A, B, C, D, bias, 2050, 18, scan=selective_scan_torch))


@needs_kernel
def test_cross_scan_bf16_and_threads(rng):
    u, delta, A, B, C, D, bias = _cross_inputs(rng, 2, 24, 12, 20, 16)
    y = scan_cpu.cross_scan_cpu(u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, bias, 12, 20)
    assert y.dtype == torch.bfloat16
    y_ref = cross_ref(u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, bias, 12, 20)
    _close(y.float(), y_ref.float(), rel=2e-2)
    # Thread count does not change the result (beyond the order of the 4-direction sum).
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = scan_cpu.cross_scan_cpu(u, delta, A, B, C, D, bias, 12, 20)
        torch.set_num_threads(2)
        y2 = scan_cpu.cross_scan_cpu(u, delta, A, B, C, D, bias, 12, 20)
    finally:
        torch.set_num_threads(n)
    assert torch.allclose(y1, y2, rtol=1e-6, atol=1e-6 * y1.abs().max().item())


def _token_inputs(g, b, d, H, W, N, R, K=4, pad=0, strided=False):
    L = H * W
    u = torch.randn(b, L, 2 * d if strided else d, generator=g)[..., :d]  # strided: a channel slice
    x = torch.randn(b, L, K * (R + 2 * N) + pad, generator=g) * 0.5
    Wdt = torch.randn(K, d, R, generator=g) * 0.3
    A = -torch.exp(torch.randn(K * d, N, generator=g) * 0.5)
    D = torch.randn(K * d, generator=g)
    bias = torch.randn(K * d, generator=g) * 0.5 - 1.0
    return u, x, Wdt, A, D, bias


@needs_kernel
@pytest.mark.parametrize(
    "b, d, H, W, N, R, pad, strided",
    [
        (1, 32, 8, 9, 16, 1, 4, False),  # the `small` preset's top level (R = 1, x rows padded to 136)
        (2, 40, 7, 5, 16, 2, 0, True),  # partial channel tile, batch > 1, u a channel slice
        (1, 16, 1, 13, 16, 1, 0, False),  # H = 1
        (1, 16, 11, 1, 8, 3, 0, False),  # W = 1, N not the unrolled 16
        (1, 32, 9, 20, 4, 1, 4, False),  # N = 4: the pruned default weights (small-n4)
        (1, 32, 40, 30, 16, 4, 0, False),  # L > one 512-step block: blocks start mid-column
        (1, 1, 1, 1, 16, 1, 0, False),  # a single pixel, a single channel
    ],
)
def test_cross_scan_tokens_matches_ref(rng, b, d, H, W, N, R, pad, strided):
    u, x, Wdt, A, D, bias = _token_inputs(rng, b, d, H, W, N, R, pad=pad, strided=strided)
    y = scan_cpu.cross_scan_tokens_cpu(u, x, Wdt, A, D, bias, H, W)
    with _one_thread():
        y_ref = cross_scan_tokens_ref(u, x, Wdt, A, D, bias, H, W, backend="ref")
    assert y.shape == (b, H * W, d) and y.dtype == torch.float32
    _close(y, y_ref)


@needs_kernel
def test_cross_scan_tokens_bf16_reads_the_same_values(rng):
    # bfloat16 operands are widened exactly inside the kernel: same result as widening them first.
    u, x, Wdt, A, D, bias = _token_inputs(rng, 2, 24, 12, 20, 16, 2)
    u16, x16 = u.bfloat16(), x.bfloat16()
    with _one_thread():  # one thread: the four directions are added to y in a fixed order
        y = scan_cpu.cross_scan_tokens_cpu(u16, x16, Wdt, A, D, bias, 12, 20)
        y32 = scan_cpu.cross_scan_tokens_cpu(u16.float(), x16.float(), Wdt, A, D, bias, 12, 20)
        with torch.no_grad():  # the dispatcher picks this kernel for inference on CPU
            y_d = cross_scan_tokens(u16, x16, Wdt, A, D, bias, 12, 20)
    assert torch.equal(y, y32)
    assert torch.equal(y_d, y)


@needs_kernel
def test_cross_scan_tokens_rejects_bad_shapes(rng):
    u, x, Wdt, A, D, bias = _token_inputs(rng, 1, 8, 3, 5, 16, 1)
    with pytest.raises(ValueError, match="H\\*W"):
        scan_cpu.cross_scan_tokens_cpu(u, x, Wdt, A, D, bias, 4, 4)
    with pytest.raises(ValueError, match="columns"):
        scan_cpu.cross_scan_tokens_cpu(u, x[..., :-1], Wdt, A, D, bias, 3, 5)
    with pytest.raises(ValueError, match="Wdt"):
        scan_cpu.cross_scan_tokens_cpu(u, x, Wdt[:, :4], A, D, bias, 3, 5)


@needs_kernel
def test_registry_uses_cpu_backend_for_inference(rng):
    assert choose_backend("cpu", needs_grad=False).name == "cpu"
    assert choose_backend("cpu", needs_grad=True).name == "cpu"  # differentiable since the C++ backward
    u, delta, A, B, C, D, bias = _cross_inputs(rng, 1, 8, 6, 5, 16)
    with torch.no_grad():
        y = cross_scan(u, delta, A, B, C, D, bias, 6, 5, backend="cpu")
    _close(y, cross_ref(u, delta, A, B, C, D, bias, 6, 5))
    u1, d1, A1, B1, C1, D1, b1 = _scan_inputs(rng, 1, 8, 30, 16, 2)
    y = selective_scan(u1, d1, A1, B1, C1, D=D1, delta_bias=b1, backend="cpu")
    _close(y, scan_ref(u1, d1, A1, B1, C1, D=D1, delta_bias=b1))


@needs_kernel
def test_rejects_bad_shapes(rng):
    u, delta, A, B, C, D, bias = _cross_inputs(rng, 1, 4, 3, 5, 16)
    with pytest.raises(ValueError):
        scan_cpu.cross_scan_cpu(u, delta, A, B, C, D, bias, 4, 4)  # H*W != L
    with pytest.raises(ValueError):
        scan_cpu.selective_scan_cpu(u, u, A[:4], B[:, :3], C[:, :3])  # groups do not divide dim


# ----------------------------------------------------------------------------------------------
def _run_python(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_import_does_not_build():
    code = (
        "import sys, cmddcli, cmddcli.model.ssm\n"
        "m = sys.modules.get('cmddcli.model.kernels.scan_cpu')\n"
        "print('tried' if m is not None and m._state['tried'] else 'untouched')\n"
    )
    r = _run_python(code, {})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "untouched"


@pytest.fixture
def fresh_kernel_state(monkeypatch, tmp_path):
    """Forget the loaded kernel for one test (an empty build cache), then restore it."""
    saved = dict(scan_cpu._state)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    scan_cpu._state.update(tried=False, lib=None, reason="", info="")
    yield
    scan_cpu._state.clear()
    scan_cpu._state.update(saved)


def test_missing_compiler_is_reported_not_raised(fresh_kernel_state, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.DEBUG, logger="cmddcli.model.kernels.scan_cpu"):
        assert scan_cpu.available() is False
    reason = scan_cpu.why_unavailable()
    assert "compiler" in reason and "g++" in reason
    assert "unavailable" in caplog.text and reason in caplog.text
    assert choose_backend("cpu", needs_grad=False).name == "torch"  # the registry falls back


def test_failing_build_is_reported_not_raised(fresh_kernel_state, monkeypatch, tmp_path, caplog):
    # A "compiler" that exists but always fails: the reason says so; its output is logged (debug).
    fake = tmp_path / "fake-cxx"
    fake.write_text("#!/bin/sh\necho 'fake-cxx: simulated failure' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    with caplog.at_level(logging.DEBUG, logger="cmddcli.model.kernels.scan_cpu"):
        assert scan_cpu.available() is False
    assert "build failed" in scan_cpu.why_unavailable()
    assert "CPU scan kernel build (native) failed" in caplog.text
    with pytest.raises(Exception, match="unavailable"):
        scan_cpu.selective_scan_cpu(*_scan_inputs(torch.Generator().manual_seed(0), 1, 4, 5, 16, 1)[:5])
