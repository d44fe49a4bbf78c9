"""SSM state pruning: the same trained network with fewer selective-scan states.

Every SS2D of a CMDDNet has N states per channel (``d_state``, the paper's 16). The scan is about
half of a CPU forward, and its cost is linear in N. In a trained network the states do not
contribute equally: A stays close to its S4D-real initialisation A_n = -(n + 1) (Gu et al.,
"On the Parameterization and Initialization of Diagonal State Space Models", 2022; the
initialisation of mamba-ssm), and for the shipped v1 weights the 12 fastest-decaying states change
the output by less than bf16 rounding does (benchmarks/RESULTS.md).

:func:`prune_states` keeps, in every SS2D, the ``n_states`` states that decay slowest (the smallest
mean |A| over that layer's directions and channels; for S4D-real A these are the first n) and drops
the others: their rows of ``x_proj_weight`` (the B and C projections) and their columns of
``A_logs``. Nothing else changes. Dropping a state whose B or C rows are zero is exact (a test
checks it); for other states the error must be measured on real photos before such weights ship:
``scripts/prune_states.py`` does that and refuses to write weights whose output moves too far.
(Ranking by the norms of the B and C rows instead kept outputs further from the full network's:
75.6 against 79.2 dB at 4 states for v1, 46.7 against 48.1 for v2, worst validation photo.)
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import CmddError
from .blocks import SS2D
from .cmddnet import CMDDNet


def slowest_states(ss2d: SS2D, n_states: int) -> list[int]:
    """Indices (ascending) of the ``n_states`` states of ``ss2d`` with the smallest mean |A|,
    A = -exp(A_logs) of shape (K*d, N): the states with the longest memory."""
    decay = torch.exp(ss2d.A_logs.detach().float()).mean(0)  # (N,) mean |A| per state
    order = torch.argsort(decay, stable=True)[:n_states]
    return sorted(int(i) for i in order)


def prune_states(model: CMDDNet, n_states: int) -> tuple[CMDDNet, dict[str, list[int]]]:
    """A new CMDDNet with ``d_state = n_states``, keeping each SS2D's slowest-decaying states.

    Args:
        model: a CMDDNet with SS2D mixers (``mixer`` ``cnn_mamba`` or ``mamba_only``), unchanged.
        n_states: states to keep, 1 <= n_states < model.config.d_state.

    Returns:
        (pruned model in eval mode on the CPU in float32, {SS2D module name: kept state indices}).

    Raises:
        CmddError: n_states out of range, or a model without SS2D layers.
    """
    cfg = model.config
    if not 1 <= n_states < cfg.d_state:
        raise CmddError(f"states to keep must be between 1 and {cfg.d_state - 1} (fewer than the model's "
                        f"{cfg.d_state}), got {n_states}")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, SS2D)}
    if not layers:
        raise CmddError(f"a {cfg.mixer} model has no selective-scan layers to prune")
    pruned = CMDDNet(dataclasses.replace(cfg, d_state=n_states))
    state = {k: v.detach().cpu().float() for k, v in model.state_dict().items()}
    kept: dict[str, list[int]] = {}
    N = cfg.d_state
    for name, layer in layers.items():
        keep = slowest_states(layer, n_states)
        kept[name] = keep
        idx = torch.tensor(keep)
        w = state[f"{name}.x_proj_weight"]  # (K, R + 2N, d): rows dt (R), B (N), C (N)
        R = w.shape[1] - 2 * N
        state[f"{name}.x_proj_weight"] = torch.cat([w[:, :R], w[:, R:R + N][:, idx], w[:, R + N:][:, idx]], 1)
        state[f"{name}.A_logs"] = state[f"{name}.A_logs"][:, idx]
    pruned.load_state_dict(state, strict=True)
    return pruned.eval(), kept
