"""Batches for the training loop: dataset items (pairs or dicts) to (blurred, sharp) tensors, centre crops."""

from __future__ import annotations

from typing import Any, List

import numpy as np
import torch

from ..errors import CmddError

__all__ = ["collate_pairs", "center_crop"]

_SOURCE_KEYS = ("blurred", "blur", "source", "input", "lq")
_TARGET_KEYS = ("sharp", "target", "gt")


def _pair_of(item: Any) -> tuple:
    if isinstance(item, dict):
        src = next((item[k] for k in _SOURCE_KEYS if k in item), None)
        tgt = next((item[k] for k in _TARGET_KEYS if k in item), None)
        if src is None or tgt is None:
            raise CmddError(f"dataset item has keys {sorted(item)}; expected a blurred and a sharp image")
        return src, tgt
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise CmddError(f"dataset item of type {type(item).__name__} is not a (blurred, sharp) pair")


def _chw(a: Any) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else torch.as_tensor(a)
    if t.ndim == 3 and t.shape[0] != 3 and t.shape[-1] == 3:
        t = t.permute(2, 0, 1)  # HWC -> CHW
    return t.float()


def collate_pairs(items: List[Any]) -> tuple:
    """A list of pairs -> (blurred (B, 3, P, P), sharp (B, 3, P, P)) float32."""
    pairs = [_pair_of(it) for it in items]
    return torch.stack([_chw(p[0]) for p in pairs]), torch.stack([_chw(p[1]) for p in pairs])


def center_crop(t: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window of (..., H, W) ``t`` (all of it where smaller; 0 = no crop)."""
    if size <= 0:
        return t
    H, W = t.shape[-2:]
    h, w = min(size, H), min(size, W)
    y, x = (H - h) // 2, (W - w) // 2
    return t[..., y : y + h, x : x + w]
