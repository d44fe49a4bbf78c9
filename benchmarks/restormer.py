"""Restormer (Zamir et al., CVPR 2022) re-implemented from its published configuration, for speed
and memory comparisons only (randomly initialised; never used for results on images)."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class _LayerNormWithBias(nn.Module):
    """LayerNorm over channels of (B, C, H, W), as Restormer's 'WithBias' variant."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):  # (B, C, H, W)
        mu = x.mean(1, keepdim=True)
        var = x.var(1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(var + 1e-5) * self.weight[:, None, None] + self.bias[:, None, None]


class _GDFN(nn.Module):
    def __init__(self, dim, expansion, bias):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x):
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class _MDTA(nn.Module):
    """Multi-Dconv-head transposed attention: attention across channels, linear in pixels."""

    def __init__(self, dim, heads, bias):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x):  # (B, C, H, W)
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))  # (B, heads, c', HW)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature  # (B, heads, c', c')
        out = attn.softmax(dim=-1) @ v
        return self.project_out(out.reshape(b, c, h, w))


class _TransformerBlock(nn.Module):
    def __init__(self, dim, heads, expansion, bias):
        super().__init__()
        self.norm1 = _LayerNormWithBias(dim)
        self.attn = _MDTA(dim, heads, bias)
        self.norm2 = _LayerNormWithBias(dim)
        self.ffn = _GDFN(dim, expansion, bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Restormer(nn.Module):
    """Restormer with its published defaults (dim 48, blocks [4, 6, 6, 8], 4 refinement blocks,
    heads [1, 2, 4, 8], FFN expansion 2.66, bias False, WithBias LayerNorm): about 26.1 M parameters."""

    def __init__(self, dim=48, blocks=(4, 6, 6, 8), refinement=4, heads=(1, 2, 4, 8), expansion=2.66, bias=False):
        super().__init__()

        def stage(c, n, h):
            return nn.Sequential(*[_TransformerBlock(c, h, expansion, bias) for _ in range(n)])

        self.patch_embed = nn.Conv2d(3, dim, 3, padding=1, bias=bias)
        self.encoder1 = stage(dim, blocks[0], heads[0])
        self.down12 = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))
        self.encoder2 = stage(dim * 2, blocks[1], heads[1])
        self.down23 = nn.Sequential(nn.Conv2d(dim * 2, dim, 3, padding=1, bias=False), nn.PixelUnshuffle(2))
        self.encoder3 = stage(dim * 4, blocks[2], heads[2])
        self.down34 = nn.Sequential(nn.Conv2d(dim * 4, dim * 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))
        self.latent = stage(dim * 8, blocks[3], heads[3])
        self.up43 = nn.Sequential(nn.Conv2d(dim * 8, dim * 16, 3, padding=1, bias=False), nn.PixelShuffle(2))
        self.reduce3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=bias)
        self.decoder3 = stage(dim * 4, blocks[2], heads[2])
        self.up32 = nn.Sequential(nn.Conv2d(dim * 4, dim * 8, 3, padding=1, bias=False), nn.PixelShuffle(2))
        self.reduce2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=bias)
        self.decoder2 = stage(dim * 2, blocks[1], heads[1])
        self.up21 = nn.Sequential(nn.Conv2d(dim * 2, dim * 4, 3, padding=1, bias=False), nn.PixelShuffle(2))
        self.decoder1 = stage(dim * 2, blocks[0], heads[0])
        self.refinement = stage(dim * 2, refinement, heads[0])
        self.output = nn.Conv2d(dim * 2, 3, 3, padding=1, bias=bias)

    def forward(self, inp):  # (B, 3, H, W), H and W padded to a multiple of 8 here
        H, W = inp.shape[-2:]
        ph, pw = (-H) % 8, (-W) % 8
        x0 = F.pad(inp, (0, pw, 0, ph), mode="reflect") if ph or pw else inp
        e1 = self.encoder1(self.patch_embed(x0))
        e2 = self.encoder2(self.down12(e1))
        e3 = self.encoder3(self.down23(e2))
        z = self.latent(self.down34(e3))
        d3 = self.decoder3(self.reduce3(torch.cat([self.up43(z), e3], 1)))
        d2 = self.decoder2(self.reduce2(torch.cat([self.up32(d3), e2], 1)))
        d1 = self.decoder1(torch.cat([self.up21(d2), e1], 1))
        out = self.output(self.refinement(d1)) + x0
        return out[..., :H, :W]
