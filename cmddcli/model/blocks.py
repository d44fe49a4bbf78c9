"""CMDDNet's building blocks, from small parts up: norms, the CNN branch, SS2D and its
window-attention alternative, the Mamba branch, and the CNN-Mamba parallel block.

Two code paths compute the same function with the same parameters:

* the **fast path** (default) is layout-stable: the network runs channels-last (NHWC memory,
  ``torch.channels_last``), so the layer norms over channels read their input in place; the SS2D
  projections are plain matrix products that write the scan's operands directly in the layout the
  scan kernel reads ((b, d, L) and (b, K, N, L), no permute-then-copy); in eval mode the batch norms
  are folded into the convolutions (Ioffe & Szegedy 2015: y = γ(Wx − μ)/σ + β is a convolution with
  weight γW/σ and bias β − γμ/σ); sums are accumulated in place when no gradient is recorded.
* the **reference path** is the straightforward transcription of the paper's equations (permute,
  normalise, permute back; einsums; separate batch norms). ``with reference_path():`` selects it;
  tests/test_model_fastpath.py compares the two (outputs and gradients) on random inputs.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .ssm import K_DIRECTIONS, cross_scan, cross_scan_tokens, native_token_scan

_FAST = True


@contextlib.contextmanager
def reference_path(enabled: bool = True):
    """Within the block, CMDDNet runs its plain reference path (``enabled=False``: the fast path).

    Process-wide switch for tests and benchmarks; the two paths share parameters and weights."""
    global _FAST
    old, _FAST = _FAST, not enabled
    try:
        yield
    finally:
        _FAST = old


def fast_path_enabled() -> bool:
    """True unless inside :func:`reference_path`."""
    return _FAST


def _recording(*tensors) -> bool:
    """Whether autograd records through these tensors (then no in-place updates)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """Eval-mode BatchNorm folded into the preceding bias-free conv: (weight, bias) of one conv.

    weight' = W · γ/√(σ²+ε) per output channel, bias' = β − μ · γ/√(σ²+ε)."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (c_out,)
    return conv.weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map, computed channels-last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = super().forward(x)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


class ConvBranch(nn.Module):
    """Residual CNN branch: conv3x3 -> BN -> LeakyReLU -> conv3x3 -> BN -> + input -> LeakyReLU."""

    def __init__(self, c: int, slope: float):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c, H, W)
        if _FAST and not self.training:
            return self._forward_folded(x)
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + x)

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:  # (B, c, H, W), eval mode only
        slope = self.act.negative_slope
        inplace = not _recording(x, self.conv1.weight)
        w1, b1 = _fold_bn(self.conv1, self.bn1)
        w2, b2 = _fold_bn(self.conv2, self.bn2)
        y = F.leaky_relu(F.conv2d(x, w1, b1, padding=1), slope, inplace=inplace)
        y = F.conv2d(y, w2, b2, padding=1)
        y = y.add_(x) if inplace else y + x
        return F.leaky_relu(y, slope, inplace=inplace)


class SS2D(nn.Module):
    """2-D selective scan over four directions (VMamba-v0 / MambaIR style), all d channels.

    Per direction k: x_proj (R + 2N) x d, dt_proj d x R with bias, A_log (d x N), D (d).
    The projections are position-wise, so they are applied once in row-major order; the
    direction orders live only inside :func:`cross_scan`.
    """

    def __init__(self, d: int, d_state: int, dt_rank: int, dt_min=1e-3, dt_max=1e-1, dt_init_floor=1e-4):
        super().__init__()
        K, N, R = K_DIRECTIONS, d_state, dt_rank
        self.d, self.N, self.R = d, N, R
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, d))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d, R))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, d))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(K * d, 1))  # (K*d, N)
        self.Ds = nn.Parameter(torch.ones(K * d))
        # Initialisation as in mamba-ssm: x_proj like nn.Linear, dt_proj uniform(+-R^-0.5),
        # dt bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max].
        bound = 1.0 / math.sqrt(d)
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        nn.init.uniform_(self.dt_projs_weight, -(R**-0.5), R**-0.5)
        with torch.no_grad():
            dt = torch.exp(torch.rand(K, d) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d, H, W) -> (B, d, H, W)
        if _FAST:
            H, W = x.shape[-2:]
            return self.scan_flat(x.flatten(2), H, W).unflatten(-1, (H, W))
        return self._forward_ref(x)

    def scan_flat(self, xs: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Fast path on a row-major map: xs (B, d, L), L = H*W -> (B, d, L) in xs's dtype.

        Each projection is one matrix product whose output is already in the scan's layout
        (contiguous (B, K, R, L), (B, K, N, L) and (B, K, d, L)); nothing is permuted or copied."""
        Bsz, d, L = xs.shape
        K, N, R = K_DIRECTIONS, self.N, self.R
        w = self.x_proj_weight  # (K, R+2N, d)
        xs = xs.contiguous()
        dts = torch.matmul(w[:, :R].reshape(K * R, d), xs)  # (B, K*R, L)
        Bs = torch.matmul(w[:, R : R + N].reshape(K * N, d), xs).view(Bsz, K, N, L)
        Cs = torch.matmul(w[:, R + N :].reshape(K * N, d), xs).view(Bsz, K, N, L)
        dts = dts.view(Bsz, K, R, L)
        if R == 1:  # rank-1 dt projection: an outer product (a GEMM with inner size 1 is slower)
            dts = self.dt_projs_weight.unsqueeze(0) * dts  # (1, K, d, 1) * (B, K, 1, L) -> (B, K, d, L)
        else:
            dts = torch.matmul(self.dt_projs_weight, dts)  # (K, d, R) @ (B, K, R, L) -> (B, K, d, L)
        As = -torch.exp(self.A_logs.float())  # (K*d, N)
        y = cross_scan(xs, dts, As, Bs, Cs, self.Ds.float(), self.dt_projs_bias.float().flatten(), H, W)  # (B, d, L)
        return y.to(xs.dtype)

    def scan_tokens(self, ut: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Fast path on a channels-last map viewed as tokens: ut (B, L, d), L = H*W -> (B, L, d) float32.

        One matrix product gives every direction's [dt_low, B, C] per position in the layout the
        token-major scan kernel reads ((B, L, K*(R+2N)), no permute); dt is formed inside the kernel
        (:func:`.ssm.cross_scan_tokens`; elsewhere it falls back to permutes around :func:`cross_scan`)."""
        K, N, R = K_DIRECTIONS, self.N, self.R
        d = ut.shape[-1]
        w = self.x_proj_weight.reshape(K * (R + 2 * N), d)
        # Output rows padded to a multiple of 8 floats: MKL's fp32 GEMM was 5-8x slower for some row
        # lengths (132 = K*(1+2*16) among them, 229 ms against 27 ms for 136 at 262144 rows, 2 cores).
        pad = -w.shape[0] % 8
        if pad:
            w = torch.cat([w, w.new_zeros(pad, d)])
        xdbl = F.linear(ut, w)  # (B, L, K*(R+2N) + pad); the kernel reads the first K*(R+2N) columns
        As = -torch.exp(self.A_logs.float())  # (K*d, N)
        return cross_scan_tokens(ut, xdbl, self.dt_projs_weight, As, self.Ds.float(),
                                 self.dt_projs_bias.float().flatten(), H, W)

    def _forward_ref(self, x: torch.Tensor) -> torch.Tensor:  # (B, d, H, W) -> (B, d, H, W)
        Bsz, d, H, W = x.shape
        L = H * W
        xs = x.flatten(2)  # (B, d, L) row-major
        x_dbl = torch.einsum("bdl,kcd->bkcl", xs, self.x_proj_weight)  # (B, K, R+2N, L)
        dts, Bs, Cs = torch.split(x_dbl, [self.R, self.N, self.N], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)  # (B, K, d, L)
        As = -torch.exp(self.A_logs.float())  # (K*d, N)
        y = cross_scan(
            xs.contiguous(), dts.contiguous(), As, Bs.contiguous(), Cs.contiguous(),
            self.Ds.float(), self.dt_projs_bias.float().flatten(), H, W,
        )  # (B, d, L)
        return y.view(Bsz, d, H, W).to(x.dtype)


class WindowMSA(nn.Module):
    """Multi-head self-attention in non-overlapping w x w windows (Swin-style, no shift).

    Stands in for SS2D in the `window_attention` ablation: (B, d, H, W) -> (B, d, H, W)."""

    def __init__(self, d: int, window: int, head_dim: int):
        super().__init__()
        heads = max(1, d // head_dim)
        while d % heads:
            heads -= 1
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(d, 3 * d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d, H, W)
        B, d, H, W = x.shape
        w = self.window
        ph, pw = (-H) % w, (-W) % w
        t = F.pad(x, (0, pw, 0, ph)).permute(0, 2, 3, 1)  # (B, Hp, Wp, d)
        Hp, Wp = H + ph, W + pw
        t = t.reshape(B, Hp // w, w, Wp // w, w, d).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, d)  # (B*nW, w*w, d)
        q, k, v = self.qkv(t).view(t.shape[0], w * w, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)  # (B*nW, heads, w*w, d/heads)
        o = o.transpose(1, 2).reshape(B, Hp // w, Wp // w, w, w, d).permute(0, 5, 1, 3, 2, 4)
        return o.reshape(B, d, Hp, Wp)[..., :H, :W]  # (B, d, H, W)


class MambaBranch(nn.Module):
    """[LN_c] -> in_proj c->2d -> (x: dwconv3x3 -> SiLU -> SS2D -> LN_d) combine (z: SiLU) -> out_proj d->c.

    With ``cfg.mixer == 'window_attention'`` the SS2D core is replaced by window self-attention
    (the paper's Transformer comparison); everything around it stays the same."""

    def __init__(self, c: int, cfg: ModelConfig):
        super().__init__()
        d = cfg.expand * c
        self.norm = nn.LayerNorm(c) if cfg.branch_norm else nn.Identity()
        self.in_proj = nn.Linear(c, 2 * d, bias=False)
        self.conv2d = nn.Conv2d(d, d, cfg.d_conv, padding=cfg.d_conv // 2, groups=d, bias=True)
        if cfg.mixer == "window_attention":
            self.ss2d = WindowMSA(d, cfg.window, cfg.head_dim)
        else:
            self.ss2d = SS2D(d, cfg.d_state, math.ceil(c / 16))
        self.out_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, c, bias=False)
        self.combine = cfg.combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c, H, W)
        if _FAST and isinstance(self.ss2d, SS2D):
            return self._forward_fast(x)
        return self._forward_ref(x)

    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:  # (B, c, H, W), best channels-last
        Bsz, c, H, W = x.shape
        d = self.out_norm.normalized_shape[0]
        t = self.norm(x.permute(0, 2, 3, 1).reshape(Bsz, H * W, c))  # (B, L, c); no copy if channels-last
        w = self.in_proj.weight  # (2d, c)
        xx = F.linear(t, w[:d])  # (B, L, d)
        z = F.linear(t, w[d:])  # (B, L, d)
        xx = self.conv2d(xx.view(Bsz, H, W, d).permute(0, 3, 1, 2))  # (B, d, H, W) channels-last: the fast dwconv
        inplace = not _recording(xx)
        if isinstance(self.ss2d, SS2D) and native_token_scan(xx.device.type, _recording(xx, self.ss2d.A_logs)):
            # A token-major scan kernel: everything stays channels-last, (B, L, d).
            ut = F.silu(xx, inplace=inplace).permute(0, 2, 3, 1).reshape(Bsz, H * W, d)  # a view if channels-last
            y = self.out_norm(self.ss2d.scan_tokens(ut, H, W))  # (B, L, d)
        else:
            if inplace:  # SiLU fused with the one layout change: channels-last -> the scan's (B, d, L)
                u = torch.ops.aten.silu.out(xx, out=torch.empty(Bsz, d, H, W, dtype=xx.dtype, device=xx.device))
            else:
                u = F.silu(xx).contiguous()
            y = self.out_norm(self.ss2d.scan_flat(u.view(Bsz, d, H * W), H, W).transpose(1, 2))  # (B, L, d)
        g = F.silu(z, inplace=inplace)
        if self.combine == "add":
            y = y.add_(g) if inplace else y + g
        else:
            y = y.mul_(g) if inplace else y * g
        out = self.out_proj(y)  # (B, L, c)
        return out.view(Bsz, H, W, c).permute(0, 3, 1, 2)  # (B, c, H, W) channels-last

    def _forward_ref(self, x: torch.Tensor) -> torch.Tensor:  # (B, c, H, W)
        t = self.norm(x.permute(0, 2, 3, 1))  # (B, H, W, c)
        xz = self.in_proj(t)  # (B, H, W, 2d)
        xx, z = xz.chunk(2, dim=-1)  # (B, H, W, d) each
        xx = F.silu(self.conv2d(xx.permute(0, 3, 1, 2).contiguous()))  # (B, d, H, W)
        y = self.ss2d(xx).permute(0, 2, 3, 1)  # (B, H, W, d)
        y = self.out_norm(y)
        y = y + F.silu(z) if self.combine == "add" else y * F.silu(z)
        return self.out_proj(y).permute(0, 3, 1, 2)  # (B, c, H, W)


class CMDDBlock(nn.Module):
    """CNN-Mamba parallel block: out = skip_scale * x + (cnn(n) + mamba(n)), n = LN_c(x)."""

    def __init__(self, c: int, cfg: ModelConfig):
        super().__init__()
        self.norm = LayerNorm2d(c)
        self.cnn = ConvBranch(c, cfg.leaky_slope) if cfg.mixer != "mamba_only" else None
        self.mixer = MambaBranch(c, cfg) if cfg.mixer != "cnn_only" else None
        self.skip_scale = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c, H, W)
        n = self.norm(x)
        if _FAST and not _recording(x, self.skip_scale):
            out = None
            for branch in (self.cnn, self.mixer):
                if branch is not None:
                    y = branch(n)
                    out = y if out is None else out.add_(y)
            return torch.addcmul(out, self.skip_scale, x) if out is not None else self.skip_scale * x
        out = self.skip_scale * x
        if self.cnn is not None:
            out = out + self.cnn(n)
        if self.mixer is not None:
            out = out + self.mixer(n)
        return out


class Downsample(nn.Sequential):
    """conv3x3 c -> c/2, PixelUnshuffle(2): (B, c, H, W) -> (B, 2c, H/2, W/2)."""

    def __init__(self, c: int):
        super().__init__(nn.Conv2d(c, c // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


class Upsample(nn.Sequential):
    """conv3x3 c -> 2c, PixelShuffle(2): (B, c, H, W) -> (B, c/2, 2H, 2W)."""

    def __init__(self, c: int):
        super().__init__(nn.Conv2d(c, c * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))
