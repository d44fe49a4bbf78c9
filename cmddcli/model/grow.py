"""Growth: the same trained network deeper (more blocks per stage) or wider (more channels),
computing the same function. Depth: :func:`grow_blocks`; width: :func:`widen` (end of this module).

A capacity test that starts where a trained network already is: :func:`grow_blocks` builds a CMDDNet
with more CNN-Mamba blocks in some stages, copies every trained tensor across, and starts each new
block as the identity, so the grown network's output equals the source's (to float rounding) and
training goes on from the source's score instead of from scratch (Chen, Goodfellow and Shlens,
"Net2Net: Accelerating Learning via Knowledge Transfer", ICLR 2016: the function-preserving
"Net2DeeperNet" idea; here applied to residual blocks).

A CMDDBlock computes ``skip_scale * x + cnn(n) + mamba(n)`` with ``n = LN_c(x)``. A new block starts
with ``skip_scale = 1`` and three tensors at zero, everything else at its usual random initialisation:

* the affine weight and bias of its LayerNorm, so ``n = 0`` at the start and grows smoothly with the
  LayerNorm weight (the ConvBranch's own residual ``LeakyReLU(... + n)`` carries its gradient);
* ``bn2.weight`` (gamma) of the ConvBranch: BatchNorm in training mode normalises any nonzero input
  to unit scale, so without this the branch would jump to full size on the first step;
* ``out_proj.weight`` of the MambaBranch (its LayerNorm ``out_norm`` is scale-invariant in the same way).

With ``norm_weight > 0`` (``--norm-weight`` of scripts/grow_blocks.py) the new blocks' LayerNorm weight
starts at that value instead of zero: no longer the identity (the ConvBranch's residual adds
``LeakyReLU(norm_weight * LN(x))``), but neither gate of a branch is then at zero together with the
other, so gradient reaches ``bn2.weight`` and ``out_proj.weight`` from the first step. With both at zero
the branch output is a product of two zero gates, a saddle Adam leaves slowly (issue 28, session 16,
arms G and H: gates ~1e-2 after 400 steps at 1e-3).

Only the number of blocks may change (``ModelConfig.blocks``, stage by stage, never fewer); width,
states and mixer stay. The trained blocks keep their order at the start of each stage; the new
identity blocks follow them.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import CmddError
from .blocks import SS2D, CMDDBlock, MambaBranch
from .ssm import K_DIRECTIONS
from .cmddnet import CMDDNet


def identity_block(block: CMDDBlock, norm_weight: float = 0.0) -> CMDDBlock:
    """Zero, in place, the tensors that make ``block`` the identity map (see the module docstring);
    returns the block. Its other parameters keep their initialisation, so all of them train.
    ``norm_weight`` > 0 starts the LayerNorm weight there instead (near-identity, module docstring)."""
    if not norm_weight >= 0.0:
        raise CmddError(f"norm_weight must be >= 0, got {norm_weight}")
    with torch.no_grad():
        block.skip_scale.fill_(1.0)
        nn.init.constant_(block.norm.weight, norm_weight)
        nn.init.zeros_(block.norm.bias)
        if block.cnn is not None:
            nn.init.zeros_(block.cnn.bn2.weight)
        if block.mixer is not None:
            nn.init.zeros_(block.mixer.out_proj.weight)
    return block


def stages(model: CMDDNet) -> list[nn.Sequential]:
    """The eight block stages in ModelConfig.blocks order: encoders 1-3, latent, decoders 1-3, refinement."""
    return [*model.encoders, model.latent, *model.decoders, model.refinement]


def grow_blocks(model: CMDDNet, blocks: Sequence[int], norm_weight: float = 0.0) -> CMDDNet:
    """A new CMDDNet with ``blocks`` per stage, computing what ``model`` computes (``norm_weight`` 0).

    Args:
        model: a CMDDNet (unchanged).
        blocks: 8 block counts (ModelConfig.blocks order), each >= the model's for that stage.
        norm_weight: the new blocks' LayerNorm weight at the start; 0 (default) = exactly the
            source's function, > 0 = near it (module docstring).

    Returns:
        The grown network on the CPU in float32, in the training mode of ``model``; its
        ``config`` equals ``model.config`` but for ``blocks``.

    Raises:
        CmddError: a count below the source's, or not 8 counts (ModelConfig's own check), or a
            negative ``norm_weight``.
    """
    cfg = model.config
    new_cfg = dataclasses.replace(cfg, blocks=tuple(blocks))  # ModelConfig validates the counts
    fewer = [i for i, (a, b) in enumerate(zip(cfg.blocks, new_cfg.blocks)) if b < a]
    if fewer:
        raise CmddError(f"growth cannot remove blocks: stage(s) {', '.join(str(i) for i in fewer)} would go from "
                        f"{[cfg.blocks[i] for i in fewer]} to {[new_cfg.blocks[i] for i in fewer]} blocks")
    grown = CMDDNet(new_cfg)
    # The source's keys are a subset of the grown network's (its blocks keep their indices), so one
    # strict load of the merged state copies embed, down/upsampling, output and every trained block.
    state = grown.state_dict()
    state.update({k: v.detach().cpu().float() for k, v in model.state_dict().items()})
    grown.load_state_dict(state, strict=True)
    for stage, n_src in zip(stages(grown), cfg.blocks):
        for block in list(stage)[n_src:]:
            identity_block(block, norm_weight)
    return grown.train(model.training)


# --- Width growth -------------------------------------------------------------------------------
#
# "Net2WiderNet" (Chen, Goodfellow and Shlens 2016), exact for CMDDNet when every channel is copied
# the same number of times: the wider network holds each channel of the source ``factor`` times, in
# blocks (new channel j of a c-channel axis is source channel j mod c). Then every LayerNorm over
# channels sees the same mean and (biased) variance, every BatchNorm and depthwise convolution acts
# per copy, PixelShuffle/PixelUnshuffle keep the block layout (their channel groups are contiguous and
# never straddle a block), and a weight that *sums* over a copied axis is split across the copies
# with random positive shares that sum to 1 per element: the sum is unchanged, and the copies,
# weighted differently downstream, receive different gradients, so they do not stay identical.
# SS2D's low-rank dt projection (rank ceil(c / 16)) may grow with c: the new rank rows of x_proj start
# at zero (no contribution) and the new columns of dt_proj keep their random initialisation.


def _copy_axis(t: torch.Tensor, dim: int, factor: int) -> torch.Tensor:
    """``t`` with axis ``dim`` repeated ``factor`` times in blocks: new index j <- source j mod size."""
    return torch.cat([t] * factor, dim=dim)


def _split_axis(t: torch.Tensor, dim: int, factor: int, gen: torch.Generator) -> torch.Tensor:
    """``t`` copied along ``dim`` in blocks, each copy scaled by its share: the shares are drawn per
    element from U(0.5, 1.5) and normalised to sum 1 over the copies, so summing the copies gives t."""
    shares = torch.rand((factor, *t.shape), generator=gen) + 0.5
    shares = shares / shares.sum(0, keepdim=True)
    return torch.cat([t * s for s in shares], dim=dim)


def _widen_conv(w: torch.Tensor, factor: int, gen: torch.Generator, *, copy_out: bool, split_in: bool,
                depthwise: bool = False) -> torch.Tensor:
    """Conv2d weight (out, in/groups, k, k): output channels copied, input channels split."""
    if depthwise:
        return _copy_axis(w, 0, factor)
    if split_in:
        w = _split_axis(w, 1, factor, gen)
    return _copy_axis(w, 0, factor) if copy_out else w


def widen(model: CMDDNet, factor: int = 2, seed: int = 0) -> CMDDNet:
    """A new CMDDNet ``factor`` times as wide, computing what ``model`` computes (Net2WiderNet).

    Args:
        model: a CMDDNet with SS2D mixers or none (``cnn_mamba``, ``mamba_only``, ``cnn_only``); unchanged.
        factor: integer width multiple, >= 2 (``width`` becomes ``factor * width``; every level, the
            Mamba inner width d and the batch-norm statistics follow).
        seed: seed of the split shares and of the new network's initialisation (new dt rank columns).

    Returns:
        The wider network on the CPU in float32, in the training mode of ``model``; its config equals
        ``model.config`` but for ``width``. Output equals the source's to float rounding, in eval and
        in training mode (see the comment above :func:`_copy_axis`).

    Raises:
        CmddError: factor not an integer >= 2, or a window-attention mixer (its heads would change).
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise CmddError(f"width factor must be an integer >= 2, got {factor!r}")
    cfg = model.config
    if cfg.mixer == "window_attention":
        raise CmddError("width growth supports SS2D mixers only (window attention's heads would change)")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, the caller's global RNG untouched
        torch.manual_seed(seed)
        wide = CMDDNet(dataclasses.replace(cfg, width=cfg.width * factor))
    src = {k: v.detach().cpu().float() for k, v in model.state_dict().items()}
    state = {k: v.detach().clone() for k, v in wide.state_dict().items()}
    f = factor
    for name, m in model.named_modules():
        p = f"{name}." if name else ""
        if isinstance(m, nn.Conv2d):
            w = src[p + "weight"]
            state[p + "weight"] = _widen_conv(
                w, f, gen, copy_out=m.out_channels != 3, split_in=m.in_channels != 3,
                depthwise=m.groups > 1)
            if m.bias is not None:
                state[p + "bias"] = _copy_axis(src[p + "bias"], 0, f)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            for key in ("weight", "bias", "running_mean", "running_var"):
                if p + key in src:
                    state[p + key] = _copy_axis(src[p + key], 0, f)
            if p + "num_batches_tracked" in src:
                state[p + "num_batches_tracked"] = src[p + "num_batches_tracked"].clone()
        elif isinstance(m, MambaBranch):
            d = m.out_norm.normalized_shape[0]
            w = _split_axis(src[p + "in_proj.weight"], 1, f, gen)  # (2d, c): rows [x (d); z (d)]
            state[p + "in_proj.weight"] = torch.cat([_copy_axis(w[:d], 0, f), _copy_axis(w[d:], 0, f)])
            state[p + "out_proj.weight"] = _copy_axis(_split_axis(src[p + "out_proj.weight"], 1, f, gen), 0, f)
        elif isinstance(m, SS2D):
            K, N, R, d = K_DIRECTIONS, m.N, m.R, m.d
            R_new = state[p + "dt_projs_weight"].shape[-1]
            xw = _split_axis(src[p + "x_proj_weight"], 2, f, gen)  # (K, R + 2N, f*d)
            dt_rows = torch.zeros(K, R_new, f * d)
            dt_rows[:, :R] = xw[:, :R]
            state[p + "x_proj_weight"] = torch.cat([dt_rows, xw[:, R:]], 1)
            dtw = state[p + "dt_projs_weight"]  # (K, f*d, R_new): new rank columns keep their init
            dtw[:, :, :R] = _copy_axis(src[p + "dt_projs_weight"], 1, f)
            state[p + "dt_projs_bias"] = _copy_axis(src[p + "dt_projs_bias"], 1, f)
            state[p + "A_logs"] = _copy_axis(src[p + "A_logs"].view(K, d, N), 1, f).reshape(K * f * d, N)
            state[p + "Ds"] = _copy_axis(src[p + "Ds"].view(K, d), 1, f).reshape(-1)
        elif isinstance(m, CMDDBlock):
            state[p + "skip_scale"] = _copy_axis(src[p + "skip_scale"], 1, f)
    wide.load_state_dict(state, strict=True)
    return wide.train(model.training)
