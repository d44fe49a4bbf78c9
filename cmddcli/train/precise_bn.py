"""Precise BatchNorm: population statistics for a trained network's BatchNorm layers.

Every ConvBranch of CMDDNet holds two BatchNorm layers. In training they normalise with the
statistics of the current batch (two 256² crops in the CPU recipes) and keep running estimates with
momentum 0.1, so the running mean and variance that inference uses are, in effect, an average over
the last ~10 batches, and the EMA weights copy them from the live network as they are. With a mix
of real and synthetic crops those few batches differ a lot, and so does a checkpoint's validation
score from one checkpoint to the next even where the learning rate is ~1e-6.

:func:`recalibrate_batchnorm` replaces the running statistics of every BatchNorm layer by their
average over many training batches with the weights held fixed ("precise BN": Wu and Johnson,
"Rethinking 'Batch' in BatchNorm", 2021, section 3; fvcore's ``fvcore.nn.precise_bn``): each layer's
momentum is set to ``None`` (PyTorch's cumulative moving average: after k batches the running mean
is the mean of the k batch means, the running variance the mean of the k unbiased batch variances),
the batches run forward in training mode without gradients, and the momenta are restored.
:func:`training_batches` draws those batches from a training config's own data, seeded apart from
the run's stream.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from ..errors import CmddError

log = logging.getLogger(__name__)

_BN = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BN]:
    """The BatchNorm layers of ``model`` that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], n_batches: int) -> int:
    """Set every BatchNorm's running mean and variance to their average over ``n_batches`` batches.

    Args:
        model: the network (its parameters are not changed; it is left in eval mode).
        batches: network inputs (B, 3, H, W) float32 in [0, 1], on the model's device; at least
            ``n_batches`` of them are read (more are not).
        n_batches: batches to average over (>= 1).

    Returns:
        The number of batches run (``n_batches``).

    Raises:
        CmddError: ``n_batches`` < 1, a model without BatchNorm layers, or fewer batches than asked.
    """
    if n_batches < 1:
        raise CmddError(f"batches to recalibrate BatchNorm over must be >= 1, got {n_batches}")
    layers = batchnorm_layers(model)
    if not layers:
        raise CmddError("the model has no BatchNorm layers to recalibrate")
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    model.train()
    seen = 0
    try:
        for x in batches:
            if seen == n_batches:
                break
            model(x)
            seen += 1
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        model.eval()
    if seen < n_batches:
        raise CmddError(f"recalibrating BatchNorm needs {n_batches} batches, the data gave {seen}")
    return seen


def training_batches(cfg, seed: int) -> Iterator[torch.Tensor]:
    """Endless network inputs (B, 3, P, P) from the first stage of training config ``cfg``: its data
    (real pairs, synthesis or a manifest, with its mix), patch size P and batch size B, drawn in the
    order of a sample stream seeded with ``seed`` (use another seed than the run's). Blurred inputs
    only; targets are dropped."""
    from torch.utils.data import DataLoader

    from .collate import collate_pairs
    from .data import data_source
    from .sampling import SampleStream, SeededDataset

    patch, batch = cfg.stages.patch[0], cfg.stages.batch[0]
    ds = data_source(cfg).train_dataset(patch, 0)
    stream = SampleStream(len(ds), batch, seed, 0)
    loader = DataLoader(SeededDataset(ds, in_worker=False), batch_sampler=stream, num_workers=0,
                        collate_fn=collate_pairs)
    for blurred, _sharp in loader:
        yield blurred
