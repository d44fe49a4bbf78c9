"""Training checkpoints: atomic writes, strict ``weights_only`` loading, RNG capture, retention.

A checkpoint is a dict of tensors and plain Python values only (so ``torch.load(weights_only=True)``
can read it)::

    {"format": "cmdd-train-checkpoint", "version": 1,
     "step": int,                      # optimizer steps done
     "model": state_dict, "model_config": dict, "train_config": dict,
     "optimizer": state_dict, "scaler": state_dict | None, "ema": state_dict | None,
     "schedule": {"kind", "base_lr", "periods", "lr"},
     "data": {"stage": int, "samples": int, "epoch": int, "offset": int},   # position in the stage stream
     "rng": {"python": ..., "numpy": ..., "torch": tensor, "cuda": [tensor]},
     "best": {"metric": str, "value": float, "step": int} | None}

Files in ``<out>/checkpoints/``: ``step_00001000.pt`` (the last ``keep_last`` kept) and ``best.pt``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..atomic import TEMP_PREFIX, TEMP_SUFFIX, atomic_path
from ..errors import CmddError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"  # <run folder>/checkpoints/step_N.pt

FORMAT = "cmdd-train-checkpoint"
VERSION = 1
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng",
    "restore_rng",
    "CheckpointManager",
    "export_weights",
    "find_checkpoint",
    "ResumePoint",
]


# ---------------------------------------------------------------- RNG states as tensors / lists


def capture_rng() -> Dict[str, Any]:
    """Python, numpy and torch (CPU + CUDA) RNG states in a weights_only-loadable form."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached"])
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    elif cuda and torch.cuda.is_available():
        log.warning("checkpoint has %d CUDA RNG states, this machine %d GPUs: CUDA RNG not restored",
                    len(cuda), torch.cuda.device_count())


# ---------------------------------------------------------------- files


def save_checkpoint(path: str | Path, state: Dict[str, Any]) -> Path:
    """Write `state` atomically: a temp file in the same folder, fsync, then ``os.replace``.

    A failed write (a full disk, ...) removes the temp file and raises CmddError with one line; the
    file at `path` and every other checkpoint are left as they were.
    """
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        # torch.save reports a failed write (ENOSPC included) as a RuntimeError from its zip writer
        if isinstance(e, (OSError, RuntimeError)):
            raise CmddError(f"{path}: cannot write the checkpoint ({_write_failure(e, path.parent)}); "
                            "the earlier checkpoints are intact") from e
        raise
    return path


def _write_failure(e: BaseException, folder: Path) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    try:
        free = shutil.disk_usage(folder).free
        note = f"{free / 2**20:.0f} MiB free on its disk"
    except OSError:
        note = "free space unknown"
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{first[:120]}; {note}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``; CmddError if it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise CmddError(f"{path}: no such checkpoint")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types; all mean "unusable"
        raise CmddError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CmddError(f"{path}: not a cmdd training checkpoint")
    if ck.get("version") != VERSION:
        raise CmddError(f"{path}: checkpoint version {ck.get('version')} is not supported (expected {VERSION})")
    missing = [k for k in ("step", "model", "model_config", "train_config", "optimizer", "rng", "data") if k not in ck]
    if missing:
        raise CmddError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ck


def slim_checkpoint(src: str | Path, dst: str | Path, keep_ema: bool = True) -> Dict[str, Any]:
    """Write a copy of checkpoint ``src`` (a file, or a run folder: its newest checkpoint) to ``dst``
    with the weights and EMA in float16 and no optimizer state: what is needed to continue a CPU run
    elsewhere or later (~4x smaller than the full checkpoint, small enough to keep in the repository).
    Resuming from it restarts Adam's moments from zero (logged); step, schedule, data position, RNG
    and best score continue. ``keep_ema=False`` also drops the EMA weights (half the size again;
    the EMA then restarts from the weights on resume, logged). Returns the slimmed state. Raises
    CmddError like :func:`load_checkpoint` / :func:`save_checkpoint`."""

    def half(state):
        if state is None:
            return None
        return {k: (v.half() if torch.is_floating_point(v) else v) for k, v in state.items()}

    src = Path(src)
    path = find_checkpoint(src) if src.is_dir() else src
    ck = load_checkpoint(path)
    ck["model"], ck["optimizer"] = half(ck["model"]), None
    ck["ema"] = half(ck.get("ema")) if keep_ema else None
    dropped = ["optimizer"] + ([] if keep_ema else ["ema"])
    ck["slim"] = {"from": str(path), "dropped": dropped, "weights_dtype": "float16"}
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst, ck)
    return ck


def average_states(states: list) -> Dict[str, torch.Tensor]:
    """The uniform mean of several state dicts of one network (stochastic weight averaging: Izmailov
    et al. 2018, "Averaging Weights Leads to Wider Optima and Better Generalization", eq. 2 with equal
    weights), in float64, returned as float32. Floating-point tensors are averaged, BatchNorm running
    statistics included (the approximation SWA's ``bn_update`` would refine); integer buffers
    (``num_batches_tracked``) are taken from the last state.

    Raises CmddError when ``states`` is empty or their keys or shapes differ."""
    if not states:
        raise CmddError("nothing to average")
    keys = list(states[0])
    for i, st in enumerate(states[1:], 1):
        if list(st) != keys or any(st[k].shape != states[0][k].shape for k in keys):
            raise CmddError(f"state {i} holds other tensors than state 0 (not the same network)")
    out = {}
    for k in keys:
        if torch.is_floating_point(states[0][k]):
            out[k] = (sum(st[k].double() for st in states) / len(states)).float()
        else:
            out[k] = states[-1][k].clone()
    return out


def export_weights(model: torch.nn.Module, path: str | Path, train_config: Dict[str, Any], step: int, *, ema: bool,
                   train_extra: Optional[Dict[str, Any]] = None, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Save ``model``'s weights (fp32) for ``cmdd deblur --weights``: the one export of training runs
    (``Trainer.export``) and checkpoints (scripts/export_checkpoint.py).

    Args:
        train_config: the run's ``TrainConfig.to_dict()``; its name and iters go into the metadata,
            and its model preset when the model has no field overrides.
        step: the step the weights are from.
        ema: whether they are the EMA of the weights.
        train_extra: more entries of the metadata's ``train`` object (data, source checkpoint, ...).
        extra: more top-level metadata entries (e.g. the best validation score).

    A run trained with ``antiring = "W,M"`` writes that clamp on the card (``"antiring"``), so engines
    loading the weights apply it as training and validation did. Returns the path written.
    """
    from ..model.weights import save_weights

    from ..engine.antiring import parse_antiring

    model_cfg = train_config.get("model") or {}
    preset = model_cfg.get("preset") if not model_cfg.get("overrides") else None
    meta = {"train": {"name": train_config.get("name"), "step": step, "iters": train_config.get("iters"),
                      **(train_extra or {}), "ema": ema}, **(extra or {})}
    ring = parse_antiring(train_config.get("antiring", "off"))
    if ring is not None:  # trained with the clamp: the card names it, so every engine applies it
        meta["antiring"] = ring.to_card()
    return save_weights(model, path, metadata=meta, preset=preset)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest ``step_*.pt`` in a run folder (or its ``checkpoints/``)."""
    p = Path(path)
    if p.is_file():
        return p
    for d in (p / CHECKPOINT_DIR, p):
        if d.is_dir():
            steps = CheckpointManager.list_steps(d)
            if steps:
                return steps[-1][1]
    raise CmddError(f"{p}: no checkpoint found (expected a .pt file or a run folder with checkpoints/step_*.pt)")


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint read once for ``--resume``: its path and its state (see :func:`load_checkpoint`)."""

    path: Path
    state: Dict[str, Any]

    @property
    def run_folder(self) -> Optional[Path]:
        """The run folder holding the checkpoint (``RUN/checkpoints/step_N.pt`` -> ``RUN``), or None
        for a checkpoint file kept elsewhere (e.g. a slimmed copy committed beside other files)."""
        return self.path.parent.parent if self.path.parent.name == CHECKPOINT_DIR else None

    @classmethod
    def find(cls, path: str | Path) -> "ResumePoint":
        """The checkpoint file ``path``, or the newest one of a run folder (:func:`find_checkpoint`),
        read on the CPU. Raises CmddError when there is none or it is not a cmdd checkpoint."""
        p = find_checkpoint(path)
        return cls(p, load_checkpoint(p, map_location="cpu"))

    def config(self):
        """The :class:`~cmddcli.train.config.TrainConfig` the run was started with."""
        from .overrides import config_from_dict

        return config_from_dict(self.state["train_config"])


class CheckpointManager:
    """Periodic checkpoints in one folder, keeping the newest `keep_last` plus ``best.pt``.

    With ``period`` (the run's ``ckpt_every``), a checkpoint off the period (a stop by signal or
    ``--stop-at``) is kept only while it is the newest: it is a resume point, and must not push the
    periodic ones out of ``keep_last``."""

    def __init__(self, folder: str | Path, keep_last: int = 3, period: int = 0):
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.period = period

    @staticmethod
    def list_steps(folder: Path) -> List[tuple]:
        out = []
        for f in folder.iterdir():
            m = _STEP_RE.match(f.name)
            if m:
                out.append((int(m.group(1)), f))
        return sorted(out)

    def path_for(self, step: int) -> Path:
        return self.folder / f"step_{step:08d}.pt"

    @property
    def best_path(self) -> Path:
        return self.folder / "best.pt"

    def save(self, step: int, state: Dict[str, Any]) -> Path:
        path = save_checkpoint(self.path_for(step), state)
        self.prune()
        log.debug("checkpoint %s", path)
        return path

    def save_best(self, state: Dict[str, Any]) -> Path:
        return save_checkpoint(self.best_path, state)

    def prune(self) -> None:
        """Keep the newest ``keep_last`` periodic checkpoints and, if the newest of all is off the
        period, that one too; remove the rest and any temporary file a killed write left behind."""
        steps = self.list_steps(self.folder)
        if self.period > 0 and steps:
            periodic = [(step, f) for step, f in steps if step % self.period == 0]
            keep = periodic[-self.keep_last:] if self.keep_last > 0 else periodic
            keep = set(f for _, f in keep) | {steps[-1][1]}
        else:
            keep = set(f for _, f in (steps[-self.keep_last:] if self.keep_last > 0 else steps))
        drop = [f for _, f in steps if f not in keep] + list(self.folder.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"))
        for f in drop:
            try:
                f.unlink()
            except FileNotFoundError:
                pass

    def set_aside_newer(self, step: int) -> List[Path]:
        """Move checkpoints past ``step`` (left by a history that a resume from an older checkpoint
        replaces) to ``replaced_after_<step>/``, so that they are neither the newest nor lost.
        Returns their new paths."""
        newer = [f for s, f in self.list_steps(self.folder) if s > step] if self.folder.is_dir() else []
        if not newer:
            return []
        dest = self.folder / f"replaced_after_{step:08d}"
        dest.mkdir(exist_ok=True)
        return [f.rename(dest / f.name) for f in newer]

    def latest(self) -> Optional[Path]:
        if not self.folder.is_dir():
            return None
        steps = self.list_steps(self.folder)
        return steps[-1][1] if steps else None
