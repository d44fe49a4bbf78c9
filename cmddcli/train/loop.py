"""The training loop: progressive patches, Adam + cyclic cosine restarts, L1, clipping, AMP, EMA, DDP,
validation, atomic checkpoints and exact resume.

One call, :func:`train`, runs a :class:`~cmddcli.train.config.TrainConfig`. Iteration ``i`` (1-based)
uses ``lr(i)`` and the stage whose range holds ``i`` (see :mod:`cmddcli.train.schedule`); ``step`` is
the number of finished iterations. Per iteration:

    x, y = next batch of stage(i)          # (B, 3, P, P) each
    lr = schedule(i)
    loss = mean |model(x) - y|             # under autocast for bf16 / fp16 (+ FFT-amplitude L1: cfg.loss)
    stop if loss is not finite on any rank (no update; the last checkpoint stays the last good one)
    backward; clip global grad norm; Adam step; EMA update

Rank 0 validates, logs (CSV, TensorBoard when it imports) and writes checkpoints; every rank keeps the
same weights (DDP averages gradients and broadcasts BatchNorm buffers from rank 0).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..errors import CmddError
from ..runtime import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown_distributed
from .checkpoint import (
    CHECKPOINT_DIR,
    CheckpointManager,
    capture_rng,
    export_weights,
    ResumePoint,
    restore_rng,
)
from .config import TrainConfig
from .overrides import to_toml
from .collate import center_crop, collate_pairs
from .logs import CsvLog, tensorboard_writer
from .losses import make_loss
from .sampling import SampleStream, SeededDataset
from .schedule import LRSchedule, Stage, stage_at, stages_of
from ..signals import stop_on_signals
from .stopping import agreed_stop, loader_worker_init, signals_blocked

log = logging.getLogger(__name__)
STOP_MESSAGE = "stopping after this step with a checkpoint (send it again to stop at once)"  # first stop signal

__all__ = ["train", "Trainer", "TrainResult", "TrainEvent", "TrainingDiverged", "DataSource", "build_model"]


class TrainingDiverged(CmddError):
    """The loss (or the gradient norm) stopped being finite; the run stopped without saving that state."""


class DataSource(Protocol):
    """Where training and validation pairs come from (see :mod:`cmddcli.train.data`).

    Items are ``(blurred, sharp)`` (or dicts with source/target-like keys), each (3, H, W) tensors or
    HxWx3 arrays in [0, 1]. Training items are random ``patch``² crops; validation items are whole
    images (the loop centre-crops them to ``data.val_crop``).
    """

    def train_dataset(self, patch: int, stage: int) -> Dataset: ...

    def val_dataset(self) -> Optional[Dataset]: ...


@dataclass
class TrainEvent:
    """What the loop reports to a callback (the CLI draws its progress line from these)."""

    kind: str  # "step" | "val" | "checkpoint" | "stage" | "done"
    step: int
    total: int
    stage: int = 0
    patch: int = 0
    batch: int = 0
    loss: float = float("nan")
    lr: float = 0.0
    it_per_s: float = 0.0
    eta_s: float = float("nan")
    values: Dict[str, float] = field(default_factory=dict)
    path: Optional[str] = None


@dataclass
class TrainResult:
    """A finished (or stopped) run: last step, run folder, last checkpoint, exported weights, best validation."""
    step: int
    out: Path
    last_checkpoint: Optional[Path]
    weights: Optional[Path]
    ema_weights: Optional[Path]
    best: Optional[dict]
    losses: List[float]  # per iteration run in this call (rank-mean), for tests and plots
    model: nn.Module  # the trained network (raw weights, unwrapped), on the training device
    stopped_by: Optional[str] = None  # "SIGINT" / "SIGTERM" when a signal ended the run early (see .stopping)


def build_model(cfg: TrainConfig, load_init: bool = True) -> nn.Module:
    """A fresh CMDDNet of ``cfg.model``; with ``cfg.init_weights`` (and ``load_init``), those weights
    loaded into it (strictly: a file for another configuration raises WeightsError). A resumed run
    passes ``load_init=False``: the checkpoint's weights replace them, so the init file need not
    exist on the machine that resumes (a slim checkpoint carried to a fresh clone)."""
    from ..model import CMDDNet

    model = CMDDNet(cfg.model.model_config())
    if cfg.init_weights and load_init:
        from ..model.weights import load_state

        load_state(model, cfg.init_weights)
        log.info("initial weights from %s", cfg.init_weights)
    return model


# ---------------------------------------------------------------- small helpers


def param_groups(model: nn.Module, optim) -> list[dict]:
    """The optimizer's parameter groups: one, or, with ``optim.grown_from`` (a run from weights grown
    deeper), the blocks beyond those counts in each stage apart with ``lr_mult = optim.grown_lr_mult``
    (the schedule's lr times it; see OptimConfig). Raises CmddError if ``grown_from`` has a stage
    with more blocks than the model."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not optim.grown_from or optim.grown_lr_mult == 1.0:
        return [{"params": trainable, "lr_mult": 1.0}]
    from ..model.grow import stages

    stage_list = stages(model)
    if any(n > len(st) for n, st in zip(optim.grown_from, stage_list)):
        raise CmddError(f"optim.grown_from {list(optim.grown_from)} has more blocks than the model "
                        f"({[len(st) for st in stage_list]})")
    fresh = {id(p) for n, st in zip(optim.grown_from, stage_list) for block in list(st)[n:]
             for p in block.parameters() if p.requires_grad}
    return [{"params": [p for p in trainable if id(p) not in fresh], "lr_mult": 1.0},
            {"params": [p for p in trainable if id(p) in fresh], "lr_mult": float(optim.grown_lr_mult)}]


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """One EMA step: ``ema = decay * ema + (1 - decay) * model`` for every parameter and every
    floating-point buffer (BatchNorm's running mean and variance); integer buffers (BatchNorm's
    batch count) are copied.

    The buffers are averaged, not copied, since session 16 of issue 28: BatchNorm's own running
    statistics (momentum 0.1) follow the last ~10 batches of two crops, and EMA weights that carried
    them as they were moved their validation gain by up to 0.045 dB between checkpoints whose
    parameters differed by < 3e-4 (training/v3/README.md). Averaged over the EMA's window they are
    the statistics of the weights' own window, as in timm's ModelEmaV2 (which averages the whole
    state dict)."""
    ema_p = list(ema.parameters())
    torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - decay)
    for eb, b in zip(ema.buffers(), model.buffers()):
        if eb.is_floating_point():
            eb.lerp_(b, 1.0 - decay)
        else:
            eb.copy_(b)




def _diff(old: dict, new: dict, prefix: str = "", ignore: tuple = ()) -> List[str]:
    """Dotted keys whose values differ between two config dicts ("key: old -> new"), except the
    dotted keys in ``ignore``."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if f"{prefix}{k}" in ignore:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.", ignore)
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


# ---------------------------------------------------------------- the trainer


class Trainer:
    """Model, optimizer, scaler, EMA, DDP wrapper and checkpoints of one run; :func:`train` drives it.

    ``Trainer(cfg, DistInfo(device=...), data=None)`` builds everything from `cfg` (data lazily);
    :meth:`iteration` is one optimizer step (used by :meth:`run` and ``benchmarks/bench_train.py``).
    """

    def __init__(self, cfg: TrainConfig, info: DistInfo, data: Optional[DataSource] = None,
                 callback: Optional[Callable[[TrainEvent], None]] = None, resuming: bool = False):
        self.cfg, self.info, self.callback = cfg, info, callback
        self.device = info.device
        if self.device.type == "cpu":
            from ..runtime import tune_cpu_allocator

            tune_cpu_allocator()
        if data is None:
            from .data import data_source

            data = data_source(cfg)
        self.data = data
        self.out = Path(cfg.out)
        self.ckpts = CheckpointManager(self.out / CHECKPOINT_DIR, cfg.keep_last, period=cfg.ckpt_every)
        self.schedule = LRSchedule.from_config(cfg)
        self.stages = stages_of(cfg)
        self.loss_fn = make_loss(cfg.loss, cfg.fft_weight, cfg.halo_weight, cfg.halo_window, cfg.target_align,
                                 cfg.anchor_weight)

        precision = cfg.precision
        if precision == "fp16" and self.device.type != "cuda":
            raise CmddError("precision fp16 needs CUDA (use bf16 or fp32 on CPU)")
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = build_model(cfg, load_init=not resuming).to(self.device)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        opt_cls = torch.optim.AdamW if o.decoupled else torch.optim.Adam
        self.opt = opt_cls(param_groups(self.model, o), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                           weight_decay=o.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        self.anchor: Optional[nn.Module] = None  # cfg.anchor_weight: the frozen start (losses.anchor_term)
        if cfg.anchor_weight > 0:
            # init_weights, also when resuming; training mode as the network (batch statistics), so
            # both give equal outputs at step 0
            self.anchor = build_model(cfg).to(self.device).train()
            for p in self.anchor.parameters():
                p.requires_grad_(False)
        from ..engine.antiring import parse_antiring

        self.antiring = parse_antiring(cfg.antiring)  # None or an AntiRing (checked by TrainConfig)
        self.ema: Optional[nn.Module] = None
        if cfg.ema_decay > 0:
            self.ema = copy.deepcopy(self.model).eval()
            for p in self.ema.parameters():
                p.requires_grad_(False)
        self.net: nn.Module = self.model
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.step = 0
        self.best: Optional[dict] = None
        self._val_input_scores: Dict[int, tuple] = {}  # validation image -> input's (PSNR, colour-fair PSNR)
        self.last_ckpt: Optional[Path] = None
        self._train_len: Dict[int, int] = {}  # stage -> samples per rank and epoch
        self.tb = None

    # ---- state

    def _state(self) -> Dict[str, Any]:
        rngs = [capture_rng()]
        if self.info.distributed:
            gathered: List[Any] = [None] * self.info.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        stage = stage_at(self.cfg, max(1, self.step))
        consumed = (self.step - stage.start) * stage.batch
        epoch, offset = divmod(consumed, max(1, self._train_len.get(stage.index, 1)))
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "model_config": self.model.config.to_dict(),
            "train_config": self.cfg.to_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "schedule": {"kind": self.schedule.kind, "base_lr": self.schedule.base_lr,
                         "periods": list(self.schedule.periods), "lr": self.schedule(self.step)},
            "data": {"stage": stage.index, "samples": consumed, "epoch": epoch, "offset": offset,
                     "world_size": self.info.world_size},
            "rng": rngs,
            "best": self.best,
        }

    def load(self, resume: "str | Path | ResumePoint") -> None:
        """Restore model, optimizer, scaler, EMA, step, best score and RNG states from a checkpoint
        (a file, a run folder's newest checkpoint, or a :class:`ResumePoint` already read).

        Raises CmddError when the checkpoint is for another model configuration or is not a cmdd
        checkpoint; changed training settings only log a warning."""
        point = resume if isinstance(resume, ResumePoint) else ResumePoint.find(resume)
        path, ck = point.path, point.state
        from ..model import ModelConfig

        mine = self.model.config
        theirs = ModelConfig.from_dict(ck["model_config"])
        if theirs != mine:
            raise CmddError(f"{path}: checkpoint is for another model configuration ({theirs} vs {mine})")
        # keys added since the checkpoint take their defaults; where the files go and how many loader
        # processes fetch the (per-sample seeded) data change nothing in the numbers
        changed = _diff(point.config().to_dict(), self.cfg.to_dict(), ignore=("out", "data.workers"))
        if changed:
            log.warning("resuming with changed settings (%s): the run is no longer a straight continuation",
                        ", ".join(changed))
        self.model.load_state_dict(ck["model"], strict=True)
        if ck.get("optimizer") is None:  # a slimmed checkpoint (scripts/slim_checkpoint.py)
            log.warning("%s holds no optimizer state: Adam's moments restart from zero", path)
        else:
            self.opt.load_state_dict(ck["optimizer"])
        if ck.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ck["scaler"])
        if self.ema is not None:
            if ck.get("ema") is None:
                log.warning("%s has no EMA weights: the EMA restarts from the current weights", path)
                self.ema.load_state_dict(self.model.state_dict())
            else:
                self.ema.load_state_dict(ck["ema"], strict=True)
        self.step = int(ck["step"])
        self.best = ck.get("best")
        if self.info.is_main:
            moved = self.ckpts.set_aside_newer(self.step)
            if moved:
                log.warning("%s holds checkpoints past step %d (%s) from the history this run replaces: moved to %s",
                            self.ckpts.folder, self.step, ", ".join(p.name for p in moved), moved[0].parent)
        rngs = ck["rng"]
        if ck["data"].get("world_size", 1) != self.info.world_size:
            log.warning("resuming with %d processes (checkpoint: %d): the data order changes",
                        self.info.world_size, ck["data"].get("world_size", 1))
        restore_rng(rngs[self.info.rank] if self.info.rank < len(rngs) else rngs[0])
        self.last_ckpt = path
        log.info("resumed from %s at step %d", path, self.step)

    def _sync_buffers(self) -> None:
        """DDP broadcasts BatchNorm buffers from rank 0 at each forward, so rank 0's are the run's; after
        the last forward the other ranks still hold their local statistics: copy rank 0's over."""
        if self.info.distributed:
            for m in (self.model, self.ema):
                if m is not None:
                    for b in m.buffers():
                        torch.distributed.broadcast(b, src=0)

    def save(self, best: bool = False) -> Optional[Path]:
        """Write a checkpoint of the current step (``checkpoints/step_N.pt``, or ``best.pt`` with
        ``best``), atomically. Collective under DDP: every rank calls it, rank 0 writes. Returns the
        path on rank 0, None elsewhere. Raises CmddError when the file cannot be written."""
        self._sync_buffers()
        state = self._state()  # collective in DDP: every rank calls it
        if not self.info.is_main:
            return None
        if best:
            return self.ckpts.save_best(state)
        self.last_ckpt = self.ckpts.save(self.step, state)
        self._emit(TrainEvent("checkpoint", self.step, self.cfg.iters, path=str(self.last_ckpt)))
        return self.last_ckpt

    def export(self, name: str, model: nn.Module) -> Path:
        """Save ``model``'s weights as ``weights/NAME.safetensors`` (fp32, with the model config and
        the run's name / step in the metadata) for ``cmdd deblur --weights``. Returns the path."""
        return export_weights(model, self.out / "weights" / f"{name}.safetensors", self.cfg.to_dict(), self.step,
                              ema=name.endswith("_ema"),
                              train_extra={"data": {"kind": self.cfg.data.kind, "path": self.cfg.data.path}},
                              extra={"best": self.best})

    # ---- data

    def _loader(self, stage: Stage) -> DataLoader:
        ds = self.data.train_dataset(stage.patch, stage.index)
        self._train_len[stage.index] = -(-len(ds) // self.info.world_size)
        start = (self.step - stage.start) * stage.batch
        stream = SampleStream(len(ds), stage.batch, self.cfg.seed, stage.index,
                              self.info.rank, self.info.world_size, start=start)
        workers = self.cfg.data.workers
        return DataLoader(SeededDataset(ds, in_worker=workers > 0), batch_sampler=stream, num_workers=workers,
                          collate_fn=collate_pairs, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
                          worker_init_fn=loader_worker_init if workers > 0 else None)

    # ---- validation

    @torch.no_grad()
    def validate(self) -> Optional[Dict[str, float]]:
        ds = self.data.val_dataset()
        if ds is None or len(ds) == 0:
            return None
        from ..eval.metrics import psnr, psnr_cf, ssim

        model = self.ema if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        n = len(ds) if self.cfg.data.val_images <= 0 else min(len(ds), self.cfg.data.val_images)
        ps, ss, cf, ps_in, cf_in = [], [], [], [], []
        for i in range(n):
            x, y = collate_pairs([ds[i]])
            x = center_crop(x, self.cfg.data.val_crop).to(self.device)
            y = center_crop(y, self.cfg.data.val_crop)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                out = model(x)
            if self.antiring is not None:
                out = self.antiring.apply(out.float(), x.float())
            pred = out.float().clamp_(0, 1)[0].permute(1, 2, 0).cpu().numpy()
            tgt = y[0].permute(1, 2, 0).numpy()
            ps.append(psnr(pred, tgt))
            ss.append(ssim(pred, tgt))
            cf.append(psnr_cf(pred, tgt))
            if i not in self._val_input_scores:  # the inputs do not change: score each once per run
                inp = x[0].float().cpu().permute(1, 2, 0).numpy()
                self._val_input_scores[i] = (psnr(inp, tgt), psnr_cf(inp, tgt))
            ps_in.append(self._val_input_scores[i][0])
            cf_in.append(self._val_input_scores[i][1])
        model.train(was_training)
        return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "psnr_cf": float(np.mean(cf)),
                "gain": float(np.mean(ps) - np.mean(ps_in)), "gain_cf": float(np.mean(cf) - np.mean(cf_in)),
                "images": float(n)}

    # ---- the loop

    def _emit(self, ev: TrainEvent) -> None:
        if self.callback is not None and self.info.is_main:
            self.callback(ev)

    def iteration(self, x: torch.Tensor, y: torch.Tensor, it: int) -> tuple:
        """One optimizer step on a batch (x, y: (B, 3, P, P)) as iteration `it` (1-based).

        Returns (loss averaged over ranks, grad norm before clipping or nan, lr). Raises
        TrainingDiverged, before touching the weights, if the loss (or the grad norm) is not finite.
        """
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        lr = self.schedule(it)
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            out = self.net(x)  # (B, 3, P, P)
            if self.antiring is not None:  # what the engine will do after the network
                out = self.antiring.apply(out.float(), x.float())
            ref = None
            if self.anchor is not None:
                with torch.no_grad():
                    ref = self.anchor(x)
        # cfg.loss: l1 / l2, l1 + FFT-amplitude L1, or l1 / l2 + halo penalty; + the anchor to ref
        loss = self.loss_fn(out.float(), y, x, ref)
        mean_loss = all_reduce_sum(loss.detach().clone(), self.info) / self.info.world_size
        lv = float(mean_loss.item())  # one sync per step: the non-finite check needs it
        if not math.isfinite(lv):
            self._diverged(it, "loss", lv)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        gn = float("nan")
        clip = self.cfg.optim.grad_clip
        if clip > 0:
            self.scaler.unscale_(self.opt)
            gn = float(torch.nn.utils.clip_grad_norm_(self.params, clip).item())
            if not math.isfinite(gn) and not self.scaler.is_enabled():  # fp16: the scaler skips such steps
                self._diverged(it, "gradient norm", gn)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            self._ema_update()
        return lv, gn, lr

    def run(self, resume: "str | Path | ResumePoint | None", stop_at: Optional[int]) -> TrainResult:
        """Train from step 0 (or from ``resume``: a checkpoint, run folder or :class:`ResumePoint`)
        up to ``stop_at`` (default: ``cfg.iters``) steps, writing checkpoints, logs and final weights
        under ``cfg.out``.

        Raises:
            CmddError: ``cfg.out`` already holds a run and ``resume`` is not given.
            TrainingDiverged: the loss or gradient norm became non-finite (no update is made).
        """
        cfg, info = self.cfg, self.info
        if resume:
            self.load(resume)
        end = cfg.iters if stop_at is None else max(self.step, min(int(stop_at), cfg.iters))
        if self.step >= cfg.iters:
            log.warning("the run already reached its %d iterations: nothing to train (raise --iters to extend it)",
                        cfg.iters)
        elif stop_at is not None and int(stop_at) <= self.step:
            log.warning("--stop-at %d is not past the checkpoint's step %d: nothing to train", int(stop_at), self.step)
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not resume and self.ckpts.latest() is not None:
                raise CmddError(f"{self.out} already holds checkpoints of a run: pass --resume {self.out} to "
                                "continue it, or choose another --out")
            (self.out / "config.toml").write_text(to_toml(cfg))
            resumed = self.step if resume else None
            self.train_log = CsvLog(self.out / "train_log.csv", ["step", "stage", "patch", "batch", "loss", "lr",
                                     "grad_norm", "it_per_s", "elapsed_s"], resumed)
            self.val_log = CsvLog(self.out / "val_log.csv", ["step", "psnr", "ssim", "psnr_cf", "gain", "gain_cf",
                                                               "weights", "best"], resumed)
            self.tb = tensorboard_writer(self.out / "tb")
        barrier(info)

        log.info("training %s: %d iterations (steps %d..%d now), stages %s, on %s%s", cfg.name, cfg.iters,
                 self.step, end, ", ".join(f"{s.patch}px x{s.batch} for {s.length}" for s in self.stages),
                 self.device, f" x{info.world_size} processes" if info.distributed else "")
        losses: List[float] = []
        loader_iter = None
        cur_stage: Optional[int] = None
        t_start = time.perf_counter()
        t_window, n_window, loss_window, gn_window = time.perf_counter(), 0, 0.0, 0.0
        t_last, step_time = time.perf_counter(), None

        stopped_by: Optional[str] = None
        with stop_on_signals(message=STOP_MESSAGE) as stop:
            while self.step < end:
                it = self.step + 1
                stage = stage_at(cfg, it)
                if stage.index != cur_stage:
                    with signals_blocked():  # no stop signal may reach a worker before it leaves the group
                        loader_iter = iter(self._loader(stage))
                    cur_stage = stage.index
                    log.info("stage %d: %dx%d patches, batch %d, iterations %d..%d", stage.index + 1, stage.patch,
                             stage.patch, stage.batch, stage.start + 1, stage.end)
                    self._emit(TrainEvent("stage", self.step, cfg.iters, stage.index, stage.patch, stage.batch))
                x, y = next(loader_iter)
                lv, gn, lr = self.iteration(x, y, it)
                self.step = it
                losses.append(lv)
                if self.step < end:  # a signal during the last step changes nothing: the run ends anyway
                    stopped_by = agreed_stop(stop, info)

                # ---- bookkeeping
                n_window += 1
                loss_window += lv
                gn_window += gn if math.isfinite(gn) else 0.0
                now = time.perf_counter()
                dt, t_last = now - t_last, now
                step_time = dt if step_time is None else 0.9 * step_time + 0.1 * dt
                rate = 1.0 / max(step_time, 1e-9)
                if self.callback is not None and info.is_main:
                    self._emit(TrainEvent("step", self.step, cfg.iters, stage.index, stage.patch, stage.batch,
                                          lv, lr, rate, (end - self.step) / rate))
                if cfg.log_every and (self.step % cfg.log_every == 0 or self.step == end or stopped_by):
                    window_rate = n_window / max(now - t_window, 1e-9)
                    row = {"step": self.step, "stage": stage.index + 1, "patch": stage.patch, "batch": stage.batch,
                           "loss": loss_window / n_window, "lr": lr, "grad_norm": gn_window / n_window,
                           "it_per_s": window_rate, "elapsed_s": now - t_start}
                    if info.is_main:
                        self.train_log.write(row)
                        if self.tb is not None:
                            for k in ("loss", "lr", "grad_norm", "it_per_s"):
                                self.tb.add_scalar(f"train/{k}", row[k], self.step)
                    log.debug("step %d loss %.5f lr %.3g %.2f it/s", self.step, row["loss"], lr, window_rate)
                    t_window, n_window, loss_window, gn_window = now, 0, 0.0, 0.0

                # on a stop, no validation: a scheduler's grace period before SIGKILL is short
                if not stopped_by and cfg.val_every and (self.step % cfg.val_every == 0 or self.step == cfg.iters):
                    self._validate_and_track()
                if stopped_by or (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or self.step == end:
                    self.save()
                    barrier(info)
                if stopped_by:
                    log.info("stopped by %s at step %d: %s", stopped_by, self.step,
                             self.last_ckpt or "checkpoint written")
                    break

        self._sync_buffers()
        weights = ema_weights = None
        if info.is_main and self.step == cfg.iters:
            weights = self.export("final", self.model)
            if self.ema is not None:
                ema_weights = self.export("final_ema", self.ema)
            log.info("finished: %s%s", weights, f" and {ema_weights}" if ema_weights else "")
        if self.tb is not None:
            self.tb.close()
        self._emit(TrainEvent("done", self.step, cfg.iters, path=str(self.last_ckpt) if self.last_ckpt else None,
                              values=dict(self.best or {})))
        return TrainResult(self.step, self.out, self.last_ckpt, weights, ema_weights, self.best, losses, self.model,
                           stopped_by)

    def _ema_update(self) -> None:
        ema_update(self.ema, self.model, self.cfg.ema_decay)

    def _validate_and_track(self) -> None:
        vals = self.validate() if self.info.is_main else None
        improved = False
        if vals is not None:
            which = "ema" if self.ema is not None else "raw"
            if self.best is None or vals["psnr"] > self.best["value"]:
                self.best = {"metric": "psnr", "value": vals["psnr"], "ssim": vals["ssim"], "step": self.step,
                             "weights": which}
                improved = True
            self.val_log.write({"step": self.step, **{k: vals[k] for k in ("psnr", "ssim", "psnr_cf", "gain", "gain_cf")},
                                "weights": which, "best": int(improved)})
            if self.tb is not None:
                self.tb.add_scalar("val/psnr", vals["psnr"], self.step)
                self.tb.add_scalar("val/ssim", vals["ssim"], self.step)
            log.info("step %d: validation PSNR %.3f dB (gain %+.3f), colour-fair %.3f dB (gain %+.3f), SSIM %.4f "
                     "(%s weights)%s", self.step, vals["psnr"], vals["gain"], vals["psnr_cf"], vals["gain_cf"],
                     vals["ssim"], which, " - best so far" if improved else "")
            self._emit(TrainEvent("val", self.step, self.cfg.iters, values=vals))
        if self.info.distributed:
            flag = [improved, self.best]
            torch.distributed.broadcast_object_list(flag, src=0)
            improved, self.best = flag
        if improved:
            self.save(best=True)
            if self.info.is_main:
                self.export("best", self.ema if self.ema is not None else self.model)

    def _diverged(self, it: int, what: str, value: float) -> None:
        last = str(self.last_ckpt) if self.last_ckpt else "none written yet"
        if self.tb is not None:
            self.tb.close()
        raise TrainingDiverged(
            f"{what} is {value} at iteration {it}: training stopped without updating the weights; "
            f"last good checkpoint: {last}. Resume from it with a lower optim.lr, or check the data.")


def train(cfg: TrainConfig, *, resume: "str | Path | ResumePoint | None" = None, data: Optional[DataSource] = None,
          callback: Optional[Callable[[TrainEvent], None]] = None, stop_at: Optional[int] = None) -> TrainResult:
    """Run (or continue) a training run.

    Args:
        cfg: the run's configuration (validated here). With `resume`, pass the checkpoint's config
            (``ResumePoint.config()``) plus any changes.
        resume: a checkpoint file or a run folder (its newest ``checkpoints/step_*.pt``), or a
            :class:`~cmddcli.train.checkpoint.ResumePoint` already read (read once, not twice).
        data: training / validation data; default built from ``cfg.data`` (:mod:`cmddcli.train.data`).
        callback: called on rank 0 with every :class:`TrainEvent` (progress display).
        stop_at: stop after this many total steps (a checkpoint is written there), e.g. for job time
            limits; ``None`` runs to ``cfg.iters``.
    Raises:
        TrainingDiverged: the loss became non-finite (checkpoints written before stay as they are).
    """
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        return Trainer(cfg, info, data, callback, resuming=bool(resume)).run(resume or None, stop_at)
    finally:
        shutdown_distributed(info)

