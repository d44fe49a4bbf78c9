"""Training: `TrainConfig` + presets (config.py), files / flags / ``--set`` overrides (overrides.py), lr schedule and stages (schedule.py), the loop with
AMP / EMA / DDP / validation (loop.py), atomic checkpoints with exact resume (checkpoint.py,
sampling.py), data from manifests / folders / synthesis (data.py).

    from cmddcli.train import train, train_preset, apply_overrides
    result = train(apply_overrides(train_preset("tiny"), ["out=\"runs/t\""]))
"""

from .config import TRAIN_PRESETS, TrainConfig, train_preset
from .overrides import apply_overrides, build_config, load_config, to_toml
from .loop import (
    Trainer,
    TrainEvent,
    TrainingDiverged,
    TrainResult,
    train,
)
from .schedule import LRSchedule, cosine_restart_cyclic_lr, stage_at, stages_of

__all__ = [
    "TRAIN_PRESETS",
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "load_config",
    "to_toml",
    "train_preset",
    "TrainEvent",
    "TrainingDiverged",
    "TrainResult",
    "Trainer",
    "train",
    "LRSchedule",
    "cosine_restart_cyclic_lr",
    "stage_at",
    "stages_of",
]
