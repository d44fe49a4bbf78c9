"""Selective scan as Triton kernels (forward and backward), 1-D and the fused four-direction scan.

Same signatures and shapes as ``selective_scan_ref`` / ``cross_scan_ref`` in ``ssm.py``::

    selective_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True)
        u, delta (b, dim, L); A (dim, N); B, C (b, groups, N, L); D, delta_bias (dim,) -> (b, dim, L)
    cross_scan_triton(u, delta, A, B, C, D, delta_bias, H, W)
        u (b, d, L=H*W) row-major; delta (b, K, d, L); B, C (b, K, N, L); A (K*d, N); D, delta_bias (K*d,)
        -> (b, d, L): the K <= 4 direction scans (row-major, column-major, reversed row-major,
        reversed column-major) mapped back to row-major order and summed.

Kernel design (see docs/gpu.md for the longer version)
------------------------------------------------------
* One program per (batch, group, block of BD channels[, block of BNS states]). A "group" is a B/C
  group of the 1-D scan or, for the cross scan, a scan direction k. The state h (BD, N) -- or
  (BD, BNS) when the states are split over programs for parallelism, their partial sums over n then
  added with atomics -- lives in registers in float32.
* The program walks L in chunks of BL steps. Per chunk it loads the (BD, BL) tiles of u / delta and
  the (N, BL) tiles of B / C once (coalesced along L in row-major directions), fuses
  ``dt = softplus(delta + bias)``, forms the (BD, N, BL) decay ``a = exp(dt*A)`` and input
  ``x = dt*u*B``, folds the carried state into the first step (``x_0 += a_0*h``) and solves the
  chunk's linear recurrence with one ``tl.associative_scan`` along BL. ``y = sum_n C*h + D*u``.
* Cross scan: direction k's step t reads row-major position ``p_k(t)`` (index arithmetic: reverse
  ``L-1-t`` for k >= 2, transpose ``(t % H)*W + t // H`` for odd k), so the four permuted copies of
  the map are never materialised: u and y exist once, row-major; y is accumulated with float32
  atomic adds (4 writers per element).
* Forward stores the state entering each chunk (b, dim, L/BL, N) float32 when gradients are needed.
* Backward, one program per the same tile, chunks in reverse: recompute the chunk's states from its
  checkpoint (one forward scan), then the adjoint ``g_t = C_t dy_t + a_{t+1} g_{t+1}`` with a reverse
  associative scan (a_{t+1} re-loaded at position t+1), with the carry from the later chunk folded
  into the last step. With ``a_t h_{t-1} = h_t - x_t`` (no division) it forms
  du, ddelta (through softplus'), dA, dB, dC, dD, ddelta_bias. dB / dC are summed over channel blocks
  and dA / dD / ddelta_bias over batch with float32 atomics (results are not bit-deterministic);
  the cross scan's du sums its four directions the same way.
* float32 accumulation throughout; u / delta / B / C may be float32, bfloat16 or float16; outputs
  take u's dtype, gradients each input's dtype.

Triton is optional (``pip install 'cmddcli[cuda]'``): it is imported inside ``try`` and the kernels are
built on first use, so importing this module never fails. ``TRITON_INTERPRET=1`` runs the kernels
on CPU tensors through Triton's interpreter (used by the tests); it must already be set when triton
is first imported, since Triton's own jit helpers (``tl.cdiv``) take the mode in force then. Block sizes come from a heuristic;
``CMDD_TRITON_SCAN="BD,BL[,WARPS[,BNS]]"`` overrides them (benchmarks/gpu_bench.py sweeps a few);
``CMDD_TRITON_REVERSE=flip`` computes the backward's reverse scan as flip + forward scan instead of
``associative_scan(reverse=True)`` (same maths; a fallback should a Triton version get the latter wrong).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from ...errors import BackendUnavailable

_IMPORT_ERROR: Optional[BaseException] = None
try:  # optional dependency
    import triton
    import triton.language as tl
    from triton.runtime.jit import JITFunction as _JITFunction
except Exception as e:  # pragma: no cover - depends on the machine
    triton = None
    tl = None
    _JITFunction = None
    _IMPORT_ERROR = e

MAX_DIRECTIONS = 4


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available() -> bool:
    """Triton imports and can run: a CUDA device, or Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    if triton is None:
        return False
    return torch.cuda.is_available() or _interpreting()


def why_unavailable() -> str:
    """Why the Triton scan cannot be used here ("" when it can)."""
    if triton is None:
        return f"triton is not installed ({_IMPORT_ERROR}): pip install 'cmddcli[cuda]'"
    if not (torch.cuda.is_available() or _interpreting()):
        return "no CUDA device"
    return ""


# ----------------------------------------------------------------------------------------------
# Kernels. Plain functions here, wrapped by triton.jit on first use (see _kernels) so that the
# interpreter / compiler choice follows TRITON_INTERPRET at that moment, not at import.
# ----------------------------------------------------------------------------------------------
def _combine(a1, x1, a2, x2):
    # Composition of h -> a1*h + x1 then h -> a2*h + x2 (first-order linear recurrence).
    return a1 * a2, a2 * x1 + x2


if _JITFunction is not None:
    # Always a compiled-mode JITFunction: associative_scan calls `.fn` of it when interpreting.
    _comb = _JITFunction(_combine)


def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, ckpt_ptr,
    L, H, W, N, DPG, G, DIM_U, NCHUNK,
    BD: tl.constexpr, BN: tl.constexpr, BL: tl.constexpr,
    CROSS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    STORE_CKPT: tl.constexpr, SPLIT: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_g = tl.program_id(1)
    nblk = tl.cdiv(DPG, BD)
    nnb = tl.cdiv(N, BN)  # state blocks: > 1 only when SPLIT
    g = pid_g // (nblk * nnb)
    blk = (pid_g // nnb) % nblk
    nb = pid_g % nnb
    DIM = G * DPG
    dl = blk * BD + tl.arange(0, BD)  # channel inside the group / direction
    dmask = dl < DPG
    dg = (g * DPG + dl).to(tl.int64)  # channel of delta, A, D, bias, checkpoints
    if CROSS:
        uc = dl.to(tl.int64)  # u and y are shared by the directions: (b, d, L)
    else:
        uc = dg
    n = nb * BN + tl.arange(0, BN)
    nmask = n < N
    l = tl.arange(0, BL)
    first = (l == 0)[None, None, :]
    last = (l == BL - 1)[None, None, :]

    u_row = u_ptr + pid_b * DIM_U * L + uc[:, None] * L  # (BD, 1)
    y_row = y_ptr + pid_b * DIM_U * L + uc[:, None] * L
    z_row = delta_ptr + pid_b * DIM * L + dg[:, None] * L
    bc_row = (pid_b * G + g) * N * L + n[:, None] * L  # (BN, 1) offsets into B, C
    dn_mask = dmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + dg[:, None] * N + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)  # (BD, BN)
    if HAS_D:
        Dv = tl.load(D_ptr + dg, mask=dmask, other=0.0).to(tl.float32)
        Dv = tl.where(nb == 0, Dv, 0.0)  # D u belongs to one state block only
    if HAS_BIAS:
        bias = tl.load(bias_ptr + dg, mask=dmask, other=0.0).to(tl.float32)
    ck_row = ckpt_ptr + ((pid_b * DIM + dg[:, None]) * NCHUNK) * N + n[None, :]  # (BD, BN)

    h = tl.zeros((BD, BN), dtype=tl.float32)
    for c in range(0, NCHUNK):
        if STORE_CKPT:
            tl.store(ck_row + c * N, h, mask=dn_mask)
        t = c * BL + l
        tmask = t < L
        if CROSS:
            tt = tl.where(g >= 2, L - 1 - t, t)
            pos = tl.where((g % 2) == 1, (tt % H) * W + tt // H, tt)
            pos = tl.where(tmask, pos, 0)
        else:
            pos = t
        m2 = dmask[:, None] & tmask[None, :]
        mb = nmask[:, None] & tmask[None, :]
        u = tl.load(u_row + pos[None, :], mask=m2, other=0.0).to(tl.float32)  # (BD, BL)
        z = tl.load(z_row + pos[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            z = z + bias[:, None]
        if SOFTPLUS:
            dt = tl.where(z > 20.0, z, tl.where(z < -15.0, tl.exp(z), tl.log(1.0 + tl.exp(z))))
        else:
            dt = z
        dt = tl.where(m2, dt, 0.0)
        Bt = tl.load(B_ptr + bc_row + pos[None, :], mask=mb, other=0.0).to(tl.float32)  # (BN, BL)
        Ct = tl.load(C_ptr + bc_row + pos[None, :], mask=mb, other=0.0).to(tl.float32)
        a = tl.exp(dt[:, None, :] * A[:, :, None])  # (BD, BN, BL), in (0, 1] for A <= 0
        x = (dt * u)[:, None, :] * Bt[None, :, :]
        x = tl.where(first, x + a * h[:, :, None], x)
        _, hs = tl.associative_scan((a, x), 2, _comb)  # hs[..., t] = h_t
        y = tl.sum(hs * Ct[None, :, :], axis=1)  # (BD, BL)
        if HAS_D:
            y = y + Dv[:, None] * u
        # Padded steps are identities (dt = 0, u = 0), so the last column is the chunk's end state.
        h = tl.sum(tl.where(last, hs, 0.0), axis=2)
        if CROSS or SPLIT:  # several writers per element: 4 directions and/or state blocks
            tl.atomic_add(y_row + pos[None, :], y, mask=m2, sem="relaxed")
        else:
            tl.store(y_row + pos[None, :], y, mask=m2)


def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, ckpt_ptr, dy_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    L, H, W, N, DPG, G, DIM_U, NCHUNK,
    BD: tl.constexpr, BN: tl.constexpr, BL: tl.constexpr,
    CROSS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    REV_FLIP: tl.constexpr, SPLIT: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_g = tl.program_id(1)
    nblk = tl.cdiv(DPG, BD)
    nnb = tl.cdiv(N, BN)  # state blocks: > 1 only when SPLIT
    g = pid_g // (nblk * nnb)
    blk = (pid_g // nnb) % nblk
    nb = pid_g % nnb
    DIM = G * DPG
    dl = blk * BD + tl.arange(0, BD)
    dmask = dl < DPG
    dg = (g * DPG + dl).to(tl.int64)
    if CROSS:
        uc = dl.to(tl.int64)
    else:
        uc = dg
    n = nb * BN + tl.arange(0, BN)
    nmask = n < N
    l = tl.arange(0, BL)
    first = (l == 0)[None, None, :]
    last = (l == BL - 1)[None, None, :]

    u_row = u_ptr + pid_b * DIM_U * L + uc[:, None] * L
    dy_row = dy_ptr + pid_b * DIM_U * L + uc[:, None] * L
    du_row = du_ptr + pid_b * DIM_U * L + uc[:, None] * L
    z_row = delta_ptr + pid_b * DIM * L + dg[:, None] * L
    dz_row = ddelta_ptr + pid_b * DIM * L + dg[:, None] * L
    bc_row = (pid_b * G + g) * N * L + n[:, None] * L
    dn_mask = dmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + dg[:, None] * N + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + dg, mask=dmask, other=0.0).to(tl.float32)
        Dv = tl.where(nb == 0, Dv, 0.0)  # D u belongs to one state block only
    if HAS_BIAS:
        bias = tl.load(bias_ptr + dg, mask=dmask, other=0.0).to(tl.float32)
    ck_row = ckpt_ptr + ((pid_b * DIM + dg[:, None]) * NCHUNK) * N + n[None, :]

    gcar = tl.zeros((BD, BN), dtype=tl.float32)  # adjoint g at the first step of the later chunk
    dA_acc = tl.zeros((BD, BN), dtype=tl.float32)
    dD_acc = tl.zeros((BD,), dtype=tl.float32)
    db_acc = tl.zeros((BD,), dtype=tl.float32)
    for ci in range(0, NCHUNK):
        c = NCHUNK - 1 - ci
        t = c * BL + l
        tmask = t < L
        t1 = t + 1
        t1mask = t1 < L
        if CROSS:
            tt = tl.where(g >= 2, L - 1 - t, t)
            pos = tl.where((g % 2) == 1, (tt % H) * W + tt // H, tt)
            pos = tl.where(tmask, pos, 0)
            tt1 = tl.where(g >= 2, L - 1 - t1, t1)
            pos1 = tl.where((g % 2) == 1, (tt1 % H) * W + tt1 // H, tt1)
            pos1 = tl.where(t1mask, pos1, 0)
        else:
            pos = t
            pos1 = t1
        m2 = dmask[:, None] & tmask[None, :]
        m21 = dmask[:, None] & t1mask[None, :]
        mb = nmask[:, None] & tmask[None, :]

        u = tl.load(u_row + pos[None, :], mask=m2, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + pos[None, :], mask=m2, other=0.0).to(tl.float32)
        z = tl.load(z_row + pos[None, :], mask=m2, other=0.0).to(tl.float32)
        z1 = tl.load(z_row + pos1[None, :], mask=m21, other=0.0).to(tl.float32)
        if HAS_BIAS:
            z = z + bias[:, None]
            z1 = z1 + bias[:, None]
        if SOFTPLUS:
            dt = tl.where(z > 20.0, z, tl.where(z < -15.0, tl.exp(z), tl.log(1.0 + tl.exp(z))))
            dt1 = tl.where(z1 > 20.0, z1, tl.where(z1 < -15.0, tl.exp(z1), tl.log(1.0 + tl.exp(z1))))
            sig = 1.0 / (1.0 + tl.exp(-z))
        else:
            dt = z
            dt1 = z1
        dt = tl.where(m2, dt, 0.0)
        dt1 = tl.where(m21, dt1, 0.0)
        Bt = tl.load(B_ptr + bc_row + pos[None, :], mask=mb, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc_row + pos[None, :], mask=mb, other=0.0).to(tl.float32)
        h0 = tl.load(ck_row + c * N, mask=dn_mask, other=0.0)

        # Recompute the chunk's states from its checkpoint.
        a = tl.exp(dt[:, None, :] * A[:, :, None])
        dtu = dt * u
        xb = dtu[:, None, :] * Bt[None, :, :]
        x = tl.where(first, xb + a * h0[:, :, None], xb)
        _, hs = tl.associative_scan((a, x), 2, _comb)
        # Adjoint: g_t = C_t dy_t + a_{t+1} g_{t+1}, the later chunk's g folded into the last step.
        a1 = tl.exp(dt1[:, None, :] * A[:, :, None])
        cd = Ct[None, :, :] * dy[:, None, :]
        cd = tl.where(last, cd + a1 * gcar[:, :, None], cd)
        if REV_FLIP:  # same maths through flip + forward scan (fallback if reverse=True misbehaves)
            _, gs = tl.associative_scan((tl.flip(a1, 2), tl.flip(cd, 2)), 2, _comb)
            gs = tl.flip(gs, 2)
        else:
            _, gs = tl.associative_scan((a1, cd), 2, _comb, reverse=True)
        gcar = tl.sum(tl.where(first, gs, 0.0), axis=2)

        gah = gs * (hs - xb)  # g_t * a_t * h_{t-1}
        gB = tl.sum(gs * Bt[None, :, :], axis=1)  # (BD, BL)
        ddt = tl.sum(gah * A[:, :, None], axis=1) + u * gB
        du = dt * gB
        if HAS_D:
            du = du + Dv[:, None] * dy
            dD_acc += tl.sum(dy * u, axis=1)  # kept by state block 0 only (see the end)
        dA_acc += tl.sum(gah * dt[:, None, :], axis=2)
        if SOFTPLUS:
            dz = ddt * sig
        else:
            dz = ddt
        dz = tl.where(m2, dz, 0.0)
        if HAS_BIAS:
            db_acc += tl.sum(dz, axis=1)
        if SPLIT:  # each state block holds a partial sum over n
            tl.atomic_add(dz_row + pos[None, :], dz, mask=m2, sem="relaxed")
        else:
            tl.store(dz_row + pos[None, :], dz, mask=m2)
        if CROSS or SPLIT:
            tl.atomic_add(du_row + pos[None, :], du, mask=m2, sem="relaxed")
        else:
            tl.store(du_row + pos[None, :], du, mask=m2)
        dBt = tl.sum(gs * dtu[:, None, :], axis=0)  # (BN, BL)
        dCt = tl.sum(hs * dy[:, None, :], axis=0)
        tl.atomic_add(dB_ptr + bc_row + pos[None, :], dBt, mask=mb, sem="relaxed")
        tl.atomic_add(dC_ptr + bc_row + pos[None, :], dCt, mask=mb, sem="relaxed")

    tl.atomic_add(dA_ptr + dg[:, None] * N + n[None, :], dA_acc, mask=dn_mask, sem="relaxed")
    if HAS_D:
        dD_acc = tl.where(nb == 0, dD_acc, 0.0)
        tl.atomic_add(dD_ptr + dg, dD_acc, mask=dmask, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + dg, db_acc, mask=dmask, sem="relaxed")


_KERNELS: dict = {}


def _kernels():
    """(forward, backward) jitted for the current mode (compiled, or interpreted if TRITON_INTERPRET=1)."""
    if triton is None:
        raise BackendUnavailable(why_unavailable())
    key = _interpreting()
    if key not in _KERNELS:
        _KERNELS[key] = (triton.jit(_scan_fwd_kernel), triton.jit(_scan_bwd_kernel))
    return _KERNELS[key]


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------
def _pow2(x: int) -> int:
    p = 1
    while p < x:
        p *= 2
    return p


def launch_config(batch: int, groups: int, dpg: int, N: int, L: int, device: torch.device) -> tuple:
    """(BD, BL, num_warps, BNS) for a scan of `batch` x `groups` x `dpg` channels, N states, length L.

    BD channels and BNS of the N states per program (BNS < N splits the states over programs, whose
    partial sums over n are then added with atomics), BL steps per chunk.
    ``CMDD_TRITON_SCAN="BD,BL[,WARPS[,BNS]]"`` overrides. The heuristic keeps the (BD, BNS, BL)
    register tile near 1024 float32 (larger tiles made ptxas use all 255 registers and spill in the
    backward, sm_90) and picks BD small enough that the grid has at least ~4 programs per multiprocessor
    where it can (the scan is sequential along L, so parallelism comes from batch x channels).
    """
    bn = _pow2(N)
    env = os.environ.get("CMDD_TRITON_SCAN", "").strip()
    if env:
        parts = [int(p) for p in env.split(",")]
        bd, bl = _pow2(parts[0]), max(2, _pow2(parts[1]))
        warps = parts[2] if len(parts) > 2 else 4
        bns = min(bn, _pow2(parts[3])) if len(parts) > 3 else bn
        return bd, bl, warps, bns
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        bd = 8
        while bd > 1 and batch * groups * -(-dpg // bd) < 4 * sms:
            bd //= 2
        bd = min(bd, _pow2(dpg))
        bl = max(16, min(256, 1024 // (bd * bn)))
        warps = 4
    else:  # the interpreter: small tiles keep numpy fast and exercise chunk carries
        bd, bl, warps = min(4, _pow2(dpg)), 16, 1
    bl = max(2, min(bl, _pow2(L)))
    return bd, bl, warps, bn


# ----------------------------------------------------------------------------------------------
# Launchers and autograd
# ----------------------------------------------------------------------------------------------
def _check_device(*tensors) -> None:
    if triton is None:
        raise BackendUnavailable(why_unavailable())
    for t in tensors:
        if t is not None and t.device.type != "cuda" and not _interpreting():
            raise BackendUnavailable(
                f"the triton scan backend needs CUDA tensors (got {t.device.type}); use CMDD_SCAN=torch on CPU"
            )


def _geometry(u, delta, B, hw):
    """(batch, groups, dim-per-group, dim of u, L, H, W, cross) and a sanity check of the shapes."""
    b, dim_u, L = u.shape
    G = B.shape[1]
    if hw is None:
        if dim_u % G:
            raise ValueError(f"dim {dim_u} is not divisible by the number of B/C groups {G}")
        if delta.shape != u.shape:
            raise ValueError(f"delta {tuple(delta.shape)} must match u {tuple(u.shape)}")
        return b, G, dim_u // G, dim_u, L, 1, 1, False
    H, W = hw
    if H * W != L:
        raise ValueError(f"H*W = {H}*{W} != L = {L}")
    if not 1 <= G <= MAX_DIRECTIONS:
        raise ValueError(f"the cross scan has 1..{MAX_DIRECTIONS} directions, got {G}")
    if delta.shape != (b, G * dim_u, L):
        raise ValueError(f"delta must be (b, K, d, L) = {(b, G, dim_u, L)}")
    return b, G, dim_u, dim_u, L, H, W, True


def _forward(u, delta, A, B, C, D, delta_bias, softplus, hw, store_ckpt):
    b, G, dpg, dim_u, L, H, W, cross = _geometry(u, delta, B, hw)
    N = A.shape[1]
    bd, bl, warps, bns = launch_config(b, G, dpg, N, L, u.device)
    split = bns < _pow2(N)
    nchunk = -(-L // bl)
    dim = G * dpg
    if cross or split:  # accumulated with atomics
        y = torch.zeros(b, dim_u, L, device=u.device, dtype=torch.float32)
    else:
        y = torch.empty(b, dim_u, L, device=u.device, dtype=u.dtype)
    ckpt = torch.empty(b, dim, nchunk, N, device=u.device, dtype=torch.float32) if store_ckpt else y
    fwd, _ = _kernels()
    grid = (b, G * -(-dpg // bd) * -(-N // bns))
    fwd[grid](
        u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None else A, y, ckpt,
        L, H, W, N, dpg, G, dim_u, nchunk,
        BD=bd, BN=bns, BL=bl, CROSS=cross, SOFTPLUS=bool(softplus),
        HAS_D=D is not None, HAS_BIAS=delta_bias is not None, STORE_CKPT=store_ckpt, SPLIT=split, num_warps=warps,
    )
    return y.to(u.dtype), (ckpt if store_ckpt else None), (bd, bl, warps, bns)


def _backward(dy, u, delta, A, B, C, D, delta_bias, ckpt, softplus, hw, cfg):
    b, G, dpg, dim_u, L, H, W, cross = _geometry(u, delta, B, hw)
    N = A.shape[1]
    bd, bl, warps, bns = cfg
    split = bns < _pow2(N)
    nchunk = ckpt.shape[2]
    dev = u.device
    f32 = torch.float32
    du = torch.zeros(b, dim_u, L, device=dev, dtype=f32) if cross or split else torch.empty_like(u)
    ddelta = torch.zeros(delta.shape, device=dev, dtype=f32) if split else torch.empty_like(delta)
    dA = torch.zeros(A.shape, device=dev, dtype=f32)
    dB = torch.zeros(B.shape, device=dev, dtype=f32)
    dC = torch.zeros(C.shape, device=dev, dtype=f32)
    dD = torch.zeros(D.shape, device=dev, dtype=f32) if D is not None else dA
    dbias = torch.zeros(delta_bias.shape, device=dev, dtype=f32) if delta_bias is not None else dA
    _, bwd = _kernels()
    grid = (b, G * -(-dpg // bd) * -(-N // bns))
    bwd[grid](
        u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None else A, ckpt, dy,
        du, ddelta, dA, dB, dC, dD, dbias,
        L, H, W, N, dpg, G, dim_u, nchunk,
        BD=bd, BN=bns, BL=bl, CROSS=cross, SOFTPLUS=bool(softplus),
        HAS_D=D is not None, HAS_BIAS=delta_bias is not None,
        REV_FLIP=os.environ.get("CMDD_TRITON_REVERSE", "native") == "flip", SPLIT=split, num_warps=warps,
    )
    return (
        du.to(u.dtype),
        ddelta.to(delta.dtype),
        dA.to(A.dtype),
        dB.to(B.dtype),
        dC.to(C.dtype),
        dD.to(D.dtype) if D is not None else None,
        dbias.to(delta_bias.dtype) if delta_bias is not None else None,
    )


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus, hw):
        u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
        D = D.contiguous() if D is not None else None
        delta_bias = delta_bias.contiguous() if delta_bias is not None else None
        need_grad = any(ctx.needs_input_grad[:7])
        y, ckpt, cfg = _forward(u, delta, A, B, C, D, delta_bias, softplus, hw, store_ckpt=need_grad)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, ckpt)
            ctx.softplus, ctx.hw, ctx.cfg = softplus, hw, cfg
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, delta_bias, ckpt = ctx.saved_tensors
        grads = _backward(
            dy.contiguous(), u, delta, A, B, C, D, delta_bias, ckpt, ctx.softplus, ctx.hw, ctx.cfg
        )
        return (*grads, None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """Selective scan with mamba-ssm's signature on CUDA (or the Triton interpreter); differentiable.

    Shapes: u, delta (b, dim, L); A (dim, N); B, C (b, groups, N, L) or (b, N, L); D, delta_bias (dim,).
    Returns (b, dim, L) in u's dtype.
    """
    _check_device(u, delta, A, B, C, D, delta_bias)
    squeeze_b, squeeze_c = B.dim() == 3, C.dim() == 3
    if squeeze_b:
        B = B.unsqueeze(1)
    if squeeze_c:
        C = C.unsqueeze(1)
    if B.shape != C.shape:
        raise ValueError(f"B {tuple(B.shape)} and C {tuple(C.shape)} must have the same shape")
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), None)


def cross_scan_triton(u, delta, A, B, C, D, delta_bias, H: int, W: int):
    """Fused four-direction scan (SS2D); same arguments and result as ``ssm.cross_scan_ref``.

    u (b, d, L) row-major, delta (b, K, d, L), B, C (b, K, N, L), A (K*d, N), D / delta_bias (K*d,) or None.
    Returns (b, d, L) in u's dtype. Softplus on delta (+ bias) always, as in cross_scan_ref.
    """
    _check_device(u, delta, A, B, C, D, delta_bias)
    b, K, d, L = delta.shape
    if B.shape[1] != K or C.shape != B.shape:
        raise ValueError(f"B, C must be (b, K={K}, N, L); got {tuple(B.shape)}, {tuple(C.shape)}")
    delta = delta.reshape(b, K * d, L)
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, delta_bias, True, (int(H), int(W)))
