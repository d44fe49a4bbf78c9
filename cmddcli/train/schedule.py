"""Learning-rate schedule and progressive-patch stages as pure functions of the iteration number.

Iterations are counted like BasicSR/Restormer: iteration ``i`` (1-based) is the i-th optimizer step;
before it, ``scheduler.step()`` has set ``last_epoch = i``, so iteration i runs at ``lr(i)`` and in the
first stage k with ``i <= stage_ends[k]``. ``lr(0)`` is the base lr.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import List, Sequence

from .config import TrainConfig, scaled_lengths, stage_bounds

__all__ = ["cosine_restart_cyclic_lr", "LRSchedule", "Stage", "stage_at", "stages_of", "plan_of"]


def cosine_restart_cyclic_lr(
    it: int,
    base_lr: float,
    periods: Sequence[int],
    restart_weights: Sequence[float],
    eta_mins: Sequence[float],
) -> float:
    """Restormer's ``CosineAnnealingRestartCyclicLR`` (basicsr/models/lr_scheduler.py) at iteration `it`.

    With cumulative period ends ``E_k``, iteration ``it`` lies in the first period k with ``it <= E_k``
    (iterations past the last end stay in the last period, clamped at its end), and

        lr = eta_min_k + w_k · ½ (base_lr − eta_min_k) · (1 + cos(π · (it − E_{k−1}) / period_k)).

    The paper's numbers (periods 92k/208k, eta_mins 3e-4/1e-6, base 3e-4) give a flat 3e-4 for
    iterations 1..92000 and a cosine from 3e-4 down to 1e-6 at iteration 300000.
    """
    ends: List[int] = []
    acc = 0
    for p in periods:
        acc += int(p)
        ends.append(acc)
    it = max(0, min(int(it), ends[-1]))
    k = min(bisect.bisect_left(ends, it), len(ends) - 1)  # first k with it <= ends[k]
    start = ends[k - 1] if k > 0 else 0
    period = int(periods[k])
    eta_min = float(eta_mins[k])
    frac = (it - start) / period if period > 0 else 1.0
    return eta_min + float(restart_weights[k]) * 0.5 * (base_lr - eta_min) * (1.0 + math.cos(math.pi * frac))


@dataclass(frozen=True)
class LRSchedule:
    """The schedule of a TrainConfig: periods scaled to ``cfg.iters`` (92:208 -> 92k/208k at 300k)."""

    kind: str
    base_lr: float
    periods: tuple
    restart_weights: tuple
    eta_mins: tuple

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "LRSchedule":
        s = cfg.schedule
        if s.kind == "cosine":  # one period over the whole run, down to the last eta_min
            return cls(s.kind, cfg.optim.lr, (cfg.iters,), (1.0,), (float(s.eta_mins[-1]),))
        periods = tuple(scaled_lengths(s.periods, cfg.iters)) if s.kind != "constant" else (cfg.iters,)
        return cls(s.kind, cfg.optim.lr, periods, tuple(s.restart_weights), tuple(s.eta_mins))

    def __call__(self, it: int) -> float:
        """Learning rate used by iteration `it` (1-based)."""
        if self.kind == "constant":
            return self.base_lr
        return cosine_restart_cyclic_lr(it, self.base_lr, self.periods, self.restart_weights, self.eta_mins)


@dataclass(frozen=True)
class Stage:
    """One progressive-training stage: iterations ``start+1 .. end`` (1-based) at ``patch``² x ``batch``."""

    index: int
    patch: int
    batch: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def stages_of(cfg: TrainConfig) -> List[Stage]:
    """All stages with their iteration ranges (a stage may be empty when `iters` is tiny)."""
    ends = stage_bounds(cfg)
    starts = [0] + ends[:-1]
    return [
        Stage(k, cfg.stages.patch[k], cfg.stages.batch[k], s, e)
        for k, (s, e) in enumerate(zip(starts, ends))
    ]


def stage_at(cfg: TrainConfig, it: int) -> Stage:
    """The stage that runs iteration `it` (1-based): the first with ``it <= end`` (BasicSR's rule)."""
    stages = stages_of(cfg)
    ends = [s.end for s in stages]
    k = min(bisect.bisect_left(ends, max(1, it)), len(stages) - 1)
    return stages[k]



def plan_of(cfg: TrainConfig) -> dict:
    """A run's plan for ``cmdd train --dry-run``: its stages (patch, batch, iterations 1-based and
    inclusive), the lr restart periods, and the lr at a few telling iterations."""
    sched = LRSchedule.from_config(cfg)
    return {
        "stages": [{"stage": s.index + 1, "patch": s.patch, "batch": s.batch, "iterations": [s.start + 1, s.end]}
                   for s in stages_of(cfg)],
        "lr_periods": list(sched.periods),
        "lr_at": {str(i): sched(i) for i in sorted({1, sched.periods[0], sched.periods[0] + 1, cfg.iters // 2,
                                                    cfg.iters})},
    }
