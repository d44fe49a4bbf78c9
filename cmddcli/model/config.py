"""Model configuration: one typed dataclass and a small table of named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from ..errors import CmddError

Mixer = Literal["cnn_mamba", "cnn_only", "mamba_only", "window_attention"]
Combine = Literal["add", "mul"]


@dataclass(frozen=True)
class ModelConfig:
    """CMDDNet hyper-parameters (the paper's architecture; the choices it leaves open are listed
    below). Defaults are the `paper` preset.

    Args:
        width: channels C at full resolution; levels run at C, 2C, 4C, 8C.
        blocks: CNN-Mamba blocks per stage: (enc1, enc2, enc3, latent, dec3, dec2, dec1, refinement).
        d_state: SSM state size N.
        expand: Mamba inner width d = expand * c.
        d_conv: depthwise conv kernel in the Mamba branch.
        mixer: which branches a block has: both (the paper), `cnn_only`, `mamba_only`, or
            `window_attention` (the paper's Transformer comparison: window self-attention in place
            of SS2D).
        combine: how the Mamba branch merges its two streams: `add` (the paper's text) or `mul`
            (VMamba's gate).
        branch_norm: the extra affine LayerNorm at the start of the Mamba branch (reproduces 39.39 G).
        leaky_slope: negative slope of the CNN branch's LeakyReLU (the paper does not give it;
            0.01 is PyTorch's default).
        window: window size for `window_attention`.
        head_dim: channels per attention head for `window_attention`.
        pad_multiple: inputs are reflect-padded to a multiple of this (3 downsamplings -> 8).
    """

    width: int = 36
    blocks: tuple = (2, 2, 2, 2, 2, 2, 2, 2)
    d_state: int = 16
    expand: int = 2
    d_conv: int = 3
    mixer: Mixer = "cnn_mamba"
    combine: Combine = "add"
    branch_norm: bool = True
    leaky_slope: float = 0.01
    window: int = 8
    head_dim: int = 12
    pad_multiple: int = 8

    def __post_init__(self):
        # Bounds well past every preset, so that a config from a file (weights metadata, a TOML) cannot
        # ask for a network that does not fit in memory or does not run (pad_multiple 0, expand 0).
        for name, lo, hi in (("width", 2, 512), ("d_state", 1, 256), ("expand", 1, 16), ("d_conv", 1, 15),
                             ("window", 1, 128), ("head_dim", 1, 512), ("pad_multiple", 8, 256)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise CmddError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")
        if self.width % 2:
            raise CmddError(f"width must be an even number >= 2, got {self.width}")
        if self.pad_multiple % 8:
            raise CmddError(f"pad_multiple must be a multiple of 8 (the network halves the image 3 times), "
                            f"got {self.pad_multiple}")
        if not isinstance(self.blocks, (tuple, list)) or len(self.blocks) != 8 or \
                any(isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= 64 for b in self.blocks):
            raise CmddError(f"blocks must be 8 integer counts in 0..64, got {self.blocks!r}")
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if isinstance(self.leaky_slope, bool) or not isinstance(self.leaky_slope, (int, float)) \
                or not 0.0 <= self.leaky_slope <= 1.0:
            raise CmddError(f"leaky_slope must be a number in 0..1, got {self.leaky_slope!r}")
        if not isinstance(self.branch_norm, bool):
            raise CmddError(f"branch_norm must be true or false, got {self.branch_norm!r}")
        if self.mixer not in ("cnn_mamba", "cnn_only", "mamba_only", "window_attention"):
            raise CmddError(f"unknown mixer {self.mixer!r}")
        if self.combine not in ("add", "mul"):
            raise CmddError(f"unknown combine {self.combine!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise CmddError(f"a model config must be a table of fields, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CmddError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        d = dict(d)
        if isinstance(d.get("blocks"), list):
            d["blocks"] = tuple(d["blocks"])
        return cls(**d)


PRESETS: dict = {
    # name: (config, one-line description)
    "paper": (ModelConfig(), "the paper's CMDDNet, width 36 (9.74 M parameters)"),
    "w24": (ModelConfig(width=24), "ablation width 24 (4.49 M)"),
    "w48": (ModelConfig(width=48), "ablation width 48 (16.99 M)"),
    "small": (ModelConfig(width=16, blocks=(1, 1, 1, 2, 1, 1, 1, 1)), "CPU-trainable: width 16, one block per stage"),
    "small-n4": (ModelConfig(width=16, blocks=(1, 1, 1, 2, 1, 1, 1, 1), d_state=4),
                 "small with 4 SSM states: the default weights, pruned from small (cmddcli.model.prune)"),
    "cpu-wide": (ModelConfig(width=24, blocks=(1, 1, 1, 2, 1, 1, 1, 1), d_state=4),
                 "small-n4 at width 24: the wider CPU candidate for real-pair training"),
    "cpu-w32": (ModelConfig(width=32, blocks=(1, 1, 1, 2, 1, 1, 1, 1), d_state=4),
                "small-n4 at width 32: the default network widened twice, exactly (scripts/grow_blocks.py)"),
    "cpu-deep": (ModelConfig(width=16, blocks=(2, 2, 2, 2, 2, 2, 2, 1), d_state=4),
                 "small-n4 with two blocks per stage: the deeper CPU candidate for real-pair training"),
    "tiny": (ModelConfig(width=8, blocks=(1, 1, 1, 1, 1, 1, 1, 1), d_state=4), "for tests: width 8, N=4"),
    "cnn_only": (ModelConfig(mixer="cnn_only"), "ablation: CNN branch only, full channels"),
    "mamba_only": (ModelConfig(mixer="mamba_only"), "ablation: Mamba branch only"),
    "window_attention": (ModelConfig(mixer="window_attention"), "ablation: window self-attention instead of SS2D"),
    "paper_mul": (ModelConfig(combine="mul"), "paper with VMamba's multiplicative gate"),
}


def model_config(name: str = "paper", **overrides) -> ModelConfig:
    """A named preset with optional field overrides, e.g. ``model_config('paper', width=24)``."""
    if name not in PRESETS:
        raise CmddError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}")
    base = PRESETS[name][0]
    if not overrides:
        return base
    return ModelConfig.from_dict({**base.to_dict(), **overrides})
