"""Depth growth: the same trained network with more blocks per stage, computing the same function.

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
from .blocks import CMDDBlock
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
