"""Selective scan (Mamba's S6 recurrence) with one signature and several backends.

Shapes follow mamba-ssm's ``selective_scan_fn``::

    u, delta : (batch, dim, L)
    A        : (dim, N)            real, usually negative
    B, C     : (batch, groups, N, L)   groups divides dim (CMDDNet uses groups = 1 per direction)
    D        : (dim,) or None
    delta_bias : (dim,) or None
    returns  : (batch, dim, L)

Maths (per batch b, channel d, state n)::

    dt_t    = softplus(delta_t + delta_bias)          (if delta_softplus)
    h_t     = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t     = sum_n C_t * h_t + D * u_t

Backends (all match ``ref``; see tests/test_ssm.py for tolerances):

* ``ref``    -- a plain Python loop over L: the truth, slow.
* ``torch``  -- differentiable, chunked, float32-stable for any dt (every exponential is of a
                non-positive number), runs on any device. Used for training without a kernel.
* ``cpu``    -- compiled C++ kernels (``scan_cpu.py``): a fused inference scan, and a
                training forward/backward with chunk checkpoints.
* ``triton`` -- our Triton GPU kernel (``scan_triton.py``), forward and backward.
* ``mamba``  -- mamba-ssm's CUDA kernel when it imports and the tensors are on CUDA.

``CMDD_SCAN=<name>`` overrides the automatic choice everywhere.

SS2D needs the same scan along four orders of an H x W map (row-major, column-major and their
reverses). :func:`cross_scan` expresses that once; a backend may fuse it (never materialising the
four copies of the feature map), the default falls back to permuting and calling the 1-D scan.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from ..errors import BackendUnavailable

log = logging.getLogger(__name__)

K_DIRECTIONS = 4


# ----------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------
def _dt(u, delta, delta_bias, delta_softplus):
    """(input dtype, working dtype, u, dt) with dt = softplus(delta + bias) in the working dtype:
    float32 (float64 stays float64, for gradcheck)."""
    dtype_in = u.dtype
    work = torch.float64 if dtype_in == torch.float64 else torch.float32
    dt = delta.to(work)
    if delta_bias is not None:
        dt = dt + delta_bias.to(work)[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)
    return dtype_in, work, u.to(work), dt


def _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus):
    """Reference prologue: dt (see _dt); B, C expanded to (b, dim, N, L)."""
    dtype_in, work, u, delta = _dt(u, delta, delta_bias, delta_softplus)
    b, dim, L = u.shape
    g = B.shape[1]
    rep = dim // g
    Bx = B.to(work).repeat_interleave(rep, dim=1)  # (b, dim, N, L)
    Cx = C.to(work).repeat_interleave(rep, dim=1)  # (b, dim, N, L)
    return dtype_in, u, delta, A.to(work), Bx, Cx


def selective_scan_ref(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """Plain loop over L. The truth for tests. Shapes: see the module docstring."""
    dtype_in, u, delta, A, Bx, Cx = _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus)
    b, dim, L = u.shape
    h = u.new_zeros(b, dim, A.shape[1])  # (b, dim, N)
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, :, t, None] * A)  # (b, dim, N)
        h = dA * h + (delta[:, :, t] * u[:, :, t])[..., None] * Bx[:, :, :, t]
        ys.append((h * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)  # (b, dim, L)
    if D is not None:
        y = y + D.to(u.dtype)[None, :, None] * u
    return y.to(dtype_in)


# ----------------------------------------------------------------------------------------------
# Differentiable chunked PyTorch backend
# ----------------------------------------------------------------------------------------------
def _default_chunk(L: int) -> int:
    # About sqrt(L) balances the two Python loops (T steps inside chunks, L/T across chunks).
    c = 1
    while c * c < L:
        c *= 2
    return max(1, min(c, 128))


def _scan_segment(u, dt, A, B, C, h0, T: int):
    """Chunked scan of one segment from state h0; returns (y without the D term, final state).

    u, dt: (b, g, r, S) with dim = g*r channels;  A: (g, r, N);  B, C: (b, g, N, S);
    h0: (b, g, r, N).  B and C broadcast over the r channels of a group (never copied).
    """
    b, g, r, S = u.shape
    N = A.shape[-1]
    nc = -(-S // T)
    pad = nc * T - S
    if pad:  # dt = 0, u = 0 makes padded steps the identity (decay 1, no input)
        u, dt, B, C = (F.pad(t, (0, pad)) for t in (u, dt, B, C))
    uu = u.view(b, g, r, 1, nc, T)
    dtc = dt.view(b, g, r, 1, nc, T)
    Bc = B.view(b, g, 1, N, nc, T)
    Cc = C.view(b, g, 1, N, nc, T)
    dA_log = dtc * A[None, :, :, :, None, None]  # (b, g, r, N, nc, T), <= 0 for A <= 0
    dBu = (dtc * uu) * Bc  # (b, g, r, N, nc, T)

    # 1) Inside chunks from a zero state: all chunks advance together, T steps.
    h = u.new_zeros(b, g, r, N, nc)
    y_in = []
    for t in range(T):
        h = torch.exp(dA_log[..., t]) * h + dBu[..., t]
        y_in.append((h * Cc[..., t]).sum(3))  # (b, g, r, nc)
    y = torch.stack(y_in, dim=-1)  # (b, g, r, nc, T)

    # 2) Carry states across chunks (the first chunk starts from h0).
    decay_in = torch.exp(torch.cumsum(dA_log, dim=-1))  # (b, g, r, N, nc, T), in [0, 1]
    carry = h0
    carries = []
    for c in range(nc):
        carries.append(carry)
        carry = decay_in[..., c, -1] * carry + h[..., c]
    carry_all = torch.stack(carries, dim=-1)  # (b, g, r, N, nc)

    # 3) The carried state's contribution: C_t . (decay from chunk start to t) * carry.
    y = y + (Cc * decay_in * carry_all[..., None]).sum(3)  # (b, g, r, nc, T)
    return y.reshape(b, g, r, nc * T)[..., :S], carry


def selective_scan_torch(
    u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True,
    chunk: Optional[int] = None, segment: Optional[int] = None,
):
    """Chunked scan in plain PyTorch ops; differentiable and float32-stable for any dt.

    The sequence is cut into segments (default: about 16 M state elements each); a segment is cut
    into chunks of T steps. Inside a chunk every chunk runs the recurrence in parallel (a loop of
    T steps); chunk-end states are then carried across chunks and segments. The decay from a
    chunk's start to step t is exp(cumsum(dt*A)) -- the exponential of a non-positive number, so
    nothing overflows whatever dt is. Under autograd each segment is checkpointed (recomputed in
    backward), so training memory is one segment's intermediates plus (b, dim, N) per segment.
    """
    dtype_in, work, u, dt = _dt(u, delta, delta_bias, delta_softplus)
    b, dim, L = u.shape
    g, N = B.shape[1], A.shape[1]
    r = dim // g
    u4, dt4 = u.view(b, g, r, L), dt.view(b, g, r, L)
    A3 = A.to(work).view(g, r, N)
    B, C = B.to(work), C.to(work)
    S = segment or max(256, (1 << 24) // max(1, b * dim * N))
    T = chunk or _default_chunk(min(S, L))
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u4, dt4, A3, B, C))
    h = u.new_zeros(b, g, r, N)
    ys = []
    for s0 in range(0, L, S):
        sl = slice(s0, min(L, s0 + S))
        seg = (u4[..., sl], dt4[..., sl], A3, B[..., sl], C[..., sl], h)
        if grad and L > S:
            y, h = torch.utils.checkpoint.checkpoint(_scan_segment, *seg, T, use_reentrant=False)
        else:
            y, h = _scan_segment(*seg, T)
        ys.append(y)
    y = (ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1)).reshape(b, dim, L)
    if D is not None:
        y = y + D.to(work)[None, :, None] * u
    return y.to(dtype_in)


# ----------------------------------------------------------------------------------------------
# Backend registry
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanBackend:
    name: str
    fn: Callable
    differentiable: bool
    devices: tuple  # device types it runs on ("cpu", "cuda")
    available: Callable[[], bool]
    why_unavailable: Callable[[], str]
    cross_fn: Optional[Callable] = None  # fused 4-direction scan, same signature as cross_scan_ref
    tokens_fn: Optional[Callable] = None  # cross scan on token-major operands (cross_scan_tokens_ref's contract)


def _always() -> bool:
    return True


def _no_reason() -> str:
    return ""


def _lazy(module: str, attr: str) -> Callable:
    """A callable that imports module.attr on first use (keeps optional backends optional)."""

    def call(*args, **kwargs):
        import importlib

        mod = importlib.import_module(module, package=__package__)
        return getattr(mod, attr)(*args, **kwargs)

    call.__name__ = attr
    return call


def _probe(module: str, fn: str = "available") -> Callable[[], bool]:
    def check() -> bool:
        import importlib

        try:
            mod = importlib.import_module(module, package=__package__)
        except Exception:  # an optional backend's import failing just means "unavailable"
            return False
        return bool(getattr(mod, fn)())

    return check


def _reason(module: str) -> Callable[[], str]:
    def why() -> str:
        import importlib

        try:
            mod = importlib.import_module(module, package=__package__)
        except Exception as e:
            return f"cannot import {module}: {e}"
        return mod.why_unavailable() if hasattr(mod, "why_unavailable") else ""

    return why


_BACKENDS: dict = {}


def register_backend(backend: ScanBackend) -> None:
    _BACKENDS[backend.name] = backend


register_backend(ScanBackend("ref", selective_scan_ref, True, ("cpu", "cuda"), _always, _no_reason))
register_backend(ScanBackend("torch", selective_scan_torch, True, ("cpu", "cuda", "meta"), _always, _no_reason))
register_backend(
    ScanBackend(
        "cpu",
        _lazy(".kernels.scan_cpu", "selective_scan_cpu"),
        True,
        ("cpu",),
        _probe(".kernels.scan_cpu"),
        _reason(".kernels.scan_cpu"),
        cross_fn=_lazy(".kernels.scan_cpu", "cross_scan_cpu"),
        tokens_fn=_lazy(".kernels.scan_cpu", "cross_scan_tokens_cpu"),
    )
)
register_backend(
    ScanBackend(
        "triton",
        _lazy(".kernels.scan_triton", "selective_scan_triton"),
        True,
        ("cuda",),
        _probe(".kernels.scan_triton"),
        _reason(".kernels.scan_triton"),
        cross_fn=_lazy(".kernels.scan_triton", "cross_scan_triton"),
    )
)
register_backend(
    ScanBackend(
        "mamba",
        _lazy(".kernels.scan_mamba", "selective_scan_mamba"),
        True,
        ("cuda",),
        _probe(".kernels.scan_mamba"),
        _reason(".kernels.scan_mamba"),
    )
)


def check_backend_name(name: str) -> str:
    """``name`` if it is ``auto`` or a scan backend's name (whether or not it runs here); else
    BackendUnavailable saying which names exist. The one check behind CMDD_SCAN, --scan and bench."""
    if name != "auto" and name not in _BACKENDS:
        raise BackendUnavailable(f"unknown scan backend {name!r}; choose from auto, {', '.join(_BACKENDS)}")
    return name


def backend_status() -> list:
    """[(name, available, differentiable, devices, reason)] for `cmdd info`."""
    rows = []
    for b in _BACKENDS.values():
        ok = b.available()
        rows.append((b.name, ok, b.differentiable, b.devices, "" if ok else b.why_unavailable()))
    return rows


_logged_choice: set = set()


def choose_backend(device_type: str, needs_grad: bool, requested: Optional[str] = None) -> ScanBackend:
    """Pick a backend: the requested one (argument or CMDD_SCAN), else the fastest that fits.

    Auto order -- CUDA: mamba, triton, torch. CPU: cpu, torch.
    A requested backend that cannot run raises BackendUnavailable with the reason.
    """
    name = requested or os.environ.get("CMDD_SCAN") or None
    if name and name != "auto":
        b = _BACKENDS[check_backend_name(name)]
        if device_type not in b.devices:
            raise BackendUnavailable(f"scan backend {name!r} does not run on {device_type} (runs on {', '.join(b.devices)})")
        if needs_grad and not b.differentiable:
            raise BackendUnavailable(f"scan backend {name!r} is inference-only; use 'torch' for training")
        if not b.available():
            raise BackendUnavailable(f"scan backend {name!r} is unavailable: {b.why_unavailable()}")
        return b
    order = ["mamba", "triton", "torch"] if device_type == "cuda" else ["cpu", "torch"]
    for cand in order:
        b = _BACKENDS[cand]
        if needs_grad and not b.differentiable:
            continue
        if device_type in b.devices and b.available():
            key = (device_type, needs_grad, cand)
            if key not in _logged_choice:
                _logged_choice.add(key)
                log.info("selective scan backend: %s (%s%s)", cand, device_type, ", training" if needs_grad else "")
            return b
    return _BACKENDS["torch"]


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, backend: Optional[str] = None):
    """Selective scan with mamba-ssm's signature; ``backend`` or ``CMDD_SCAN`` picks the implementation."""
    b = choose_backend(u.device.type, _needs_grad(u, delta, A, B, C, D, delta_bias), backend)
    return b.fn(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus)


# ----------------------------------------------------------------------------------------------
# Four-direction cross scan (SS2D core)
# ----------------------------------------------------------------------------------------------
def _to_direction(x: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
    """(..., H*W) in row-major order -> (..., H*W) in direction k's order.

    k = 0 row-major, 1 column-major, 2 reversed row-major, 3 reversed column-major.
    """
    if k in (1, 3):
        x = x.unflatten(-1, (H, W)).transpose(-1, -2).flatten(-2)
    if k in (2, 3):
        x = x.flip(-1)
    return x


def _from_direction(y: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
    """Inverse of _to_direction."""
    if k in (2, 3):
        y = y.flip(-1)
    if k in (1, 3):
        y = y.unflatten(-1, (W, H)).transpose(-1, -2).flatten(-2)
    return y


def cross_scan_ref(u, delta, A, B, C, D, delta_bias, H: int, W: int, scan: Callable = selective_scan_ref):
    """Four-direction selective scan over an H x W map, outputs merged by summation.

    Args:
        u:          (b, d, L) the map in row-major order, L = H*W (shared by all directions).
        delta:      (b, K, d, L) per-direction dt (before bias / softplus), row-major order.
        A:          (K*d, N);  D, delta_bias: (K*d,)
        B, C:       (b, K, N, L) per-direction input/output projections, row-major order.
        scan:       the 1-D selective scan used per direction.
    Returns:
        (b, d, L) = sum over k of the k-th direction's scan, mapped back to row-major order.
    """
    b, d, L = u.shape
    K = delta.shape[1]
    # Materialise the K orders: (b, K*d, L) -- exactly what a fused backend avoids.
    us = torch.cat([_to_direction(u, H, W, k) for k in range(K)], dim=1)
    ds = torch.cat([_to_direction(delta[:, k], H, W, k) for k in range(K)], dim=1)
    Bs = torch.stack([_to_direction(B[:, k], H, W, k) for k in range(K)], dim=1)  # (b, K, N, L)
    Cs = torch.stack([_to_direction(C[:, k], H, W, k) for k in range(K)], dim=1)
    ys = scan(us, ds, A, Bs, Cs, D=D, delta_bias=delta_bias, delta_softplus=True)  # (b, K*d, L)
    ys = ys.view(b, K, d, L)
    return sum(_from_direction(ys[:, k], H, W, k) for k in range(K))


def cross_scan(u, delta, A, B, C, D, delta_bias, H: int, W: int, backend: Optional[str] = None):
    """SS2D's four-direction scan with the chosen backend (fused where the backend offers it)."""
    b = choose_backend(u.device.type, _needs_grad(u, delta, A, B, C, D, delta_bias), backend)
    if b.cross_fn is not None:
        return b.cross_fn(u, delta, A, B, C, D, delta_bias, H, W)
    return cross_scan_ref(u, delta, A, B, C, D, delta_bias, H, W, scan=b.fn)


# ----------------------------------------------------------------------------------------------
# Token-major cross scan (channels-last SS2D)
# ----------------------------------------------------------------------------------------------
def cross_scan_tokens_ref(u, x, Wdt, A, D, delta_bias, H: int, W: int, backend: Optional[str] = None):
    """SS2D's scan on token-major operands, written as permutes around :func:`cross_scan`.

    Args:
        u:          (b, L, d) the map in row-major order (a channels-last map viewed as tokens).
        x:          (b, L, >= K*(R+2N)): x_proj's output per position; direction k's
                    [dt_low (R), B (N), C (N)] at columns k*(R+2N).
        Wdt:        (K, d, R); delta = Wdt[k] @ dt_low (+ delta_bias, softplus inside the scan).
        A:          (K*d, N);  D, delta_bias: (K*d,).
    Returns:
        (b, L, d) float32, the sum of the K directions' scans.
    """
    b, L, d = u.shape
    K, _, R = Wdt.shape
    N = A.shape[1]
    xv = x[..., : K * (R + 2 * N)].float().reshape(b, L, K, R + 2 * N)
    delta = torch.einsum("blkr,kdr->bkdl", xv[..., :R], Wdt.float())  # (b, K, d, L)
    Bs = xv[..., R : R + N].permute(0, 2, 3, 1).contiguous()  # (b, K, N, L)
    Cs = xv[..., R + N :].permute(0, 2, 3, 1).contiguous()
    y = cross_scan(u.float().transpose(1, 2).contiguous(), delta.contiguous(), A, Bs, Cs, D, delta_bias, H, W,
                   backend=backend)  # (b, d, L)
    return y.float().transpose(1, 2)


def native_token_scan(device_type: str, needs_grad: bool, backend: Optional[str] = None) -> bool:
    """Whether the backend chosen for these conditions has a token-major kernel (then
    :func:`cross_scan_tokens` does not permute); the fast block path asks before choosing its layout."""
    try:
        return choose_backend(device_type, needs_grad, backend).tokens_fn is not None
    except BackendUnavailable:
        return False


def cross_scan_tokens(u, x, Wdt, A, D, delta_bias, H: int, W: int, backend: Optional[str] = None):
    """:func:`cross_scan_tokens_ref`'s contract with the chosen backend's token-major kernel where it
    has one (it handles autograd itself), else the permuting reference around that backend's scan."""
    b = choose_backend(u.device.type, _needs_grad(u, x, Wdt, A, D, delta_bias), backend)
    if b.tokens_fn is not None:
        return b.tokens_fn(u, x, Wdt, A, D, delta_bias, H, W)
    return cross_scan_tokens_ref(u, x, Wdt, A, D, delta_bias, H, W, backend=b.name)
