"""CMDDNet: a four-level U-Net of CNN-Mamba parallel blocks without encoder-decoder skips."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import blocks
from .blocks import CMDDBlock, Downsample, Upsample
from .config import ModelConfig


def _stage(c: int, n: int, cfg: ModelConfig) -> nn.Sequential:
    return nn.Sequential(*[CMDDBlock(c, cfg) for _ in range(n)])


def pad_to_multiple(x: torch.Tensor, m: int):
    """Reflect-pad (B, C, H, W) at the bottom/right to multiples of m (replicate where a side is
    too short to reflect). Returns the padded tensor and the original (H, W)."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % m, (-W) % m
    # Reflection needs pad < size; grow in reflect steps, finishing with replicate for tiny inputs.
    while ph or pw:
        sh = min(ph, x.shape[-2] - 1)
        sw = min(pw, x.shape[-1] - 1)
        if sh == 0 and sw == 0:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            break
        x = F.pad(x, (0, sw, 0, sh), mode="reflect")
        ph, pw = ph - sh, pw - sw
    return x, (H, W)


class CMDDNet(nn.Module):
    """CMDDNet, the paper's CNN-Mamba U-Net.

    embed conv3x3 3->C; encoder levels at C, 2C, 4C (blocks, then Downsample); latent at 8C;
    decoder levels at 4C, 2C, C (Upsample, then blocks); refinement at C; output conv3x3 C->3
    added to the input. Input (B, 3, H, W) in [0, 1], any H, W; output same shape, not clamped.
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        cfg = config or ModelConfig()
        self.config = cfg
        C, nb = cfg.width, cfg.blocks
        self.embed = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.encoders = nn.ModuleList([_stage(C * 2**i, nb[i], cfg) for i in range(3)])
        self.downs = nn.ModuleList([Downsample(C * 2**i) for i in range(3)])
        self.latent = _stage(C * 8, nb[3], cfg)
        self.ups = nn.ModuleList([Upsample(C * 2 ** (3 - i)) for i in range(3)])  # 8C->4C, 4C->2C, 2C->C
        self.decoders = nn.ModuleList([_stage(C * 2 ** (2 - i), nb[4 + i], cfg) for i in range(3)])
        self.refinement = _stage(C, nb[7], cfg)
        self.output = nn.Conv2d(C, 3, 3, padding=1, bias=False)
        # The output is a residual: starting it at zero makes a fresh network the identity, so
        # training begins at the input's score instead of ~6 dB (the paper gives no init).
        nn.init.zeros_(self.output.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W)
        xp, (H, W) = pad_to_multiple(x, self.config.pad_multiple)
        if blocks.fast_path_enabled():  # run channels-last throughout (see blocks' docstring)
            xp = xp.contiguous(memory_format=torch.channels_last)
        f = self.embed(xp)  # (B, C, Hp, Wp)
        for enc, down in zip(self.encoders, self.downs):
            f = down(enc(f))  # (B, 2c, h/2, w/2)
        f = self.latent(f)  # (B, 8C, Hp/8, Wp/8)
        for up, dec in zip(self.ups, self.decoders):
            f = dec(up(f))  # (B, c/2, 2h, 2w)
        f = self.refinement(f)  # (B, C, Hp, Wp)
        out = self.output(f) + xp  # residual
        return out[..., :H, :W].contiguous()  # (B, 3, H, W), standard layout
