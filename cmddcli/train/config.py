"""Training configuration: typed dataclasses and named presets (files and ``key=value`` overrides: overrides.py).

A config is built in three layers, later ones winning: a preset (``paper``, ``tiny``), a TOML file, then
``--set section.key=value`` overrides. Unknown keys are rejected everywhere, values are type-checked
against the dataclass fields (an int where a float is expected is fine; a float where an int is
expected, or a string where a number is expected, is an error).

```toml
iters = 300000            # total optimizer steps
seed = 0
out = "runs/paper"
precision = "fp32"        # fp32 | bf16 | fp16 (autocast on CUDA; bf16 also on CPU)

[model]                   # a model preset plus any ModelConfig field, e.g. width = 24
preset = "paper"

[stages]                  # progressive patches (SPEC §4); lengths = ratio scaled to `iters`
patch = [128, 192, 256]
batch = [8, 4, 1]         # per process (the global batch is batch x world size)
ratio = [192, 148, 60]

[optim]
lr = 3e-4
weight_decay = 1e-4
betas = [0.9, 0.999]
grad_clip = 0.01          # max global grad norm (Restormer's use_grad_clip); 0 disables

[schedule]                # Restormer's CosineAnnealingRestartCyclicLR, periods scaled to `iters`
periods = [92, 208]
restart_weights = [1.0, 1.0]
eta_mins = [3e-4, 1e-6]

[data]
kind = "manifest"         # manifest | pairs | synth
path = "data/dpdd/manifest.json"
# synthetic pairs on the fly instead (docs/synthetic_defocus.md): kind = "synth", path = a folder of
# sharp photographs, synth = "v2", val_synth = "heldout", val_sharp = "...", sharp_tiles = 256
```

Other recipes: ``loss = "l1_fft"`` (+ ``fft_weight``), ``loss = "l2"``, ``loss = "l1_halo"`` /
``"l2_halo"`` (+ ``halo_weight``, ``halo_window``), ``optim.decoupled = true`` (AdamW),
``schedule.kind = "cosine"`` (one cosine decay to ``schedule.eta_mins[-1]``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List

from ..errors import CmddError

__all__ = [
    "ModelSection",
    "StagesConfig",
    "OptimConfig",
    "ScheduleConfig",
    "DataConfig",
    "TrainConfig",
    "TRAIN_PRESETS",
    "train_preset",
    "stage_bounds",
    "scaled_lengths",
]


# ---------------------------------------------------------------- sections


@dataclass
class ModelSection:
    """Which network to train: a model preset name plus ModelConfig field overrides."""

    preset: str = "paper"
    overrides: Dict[str, Any] = field(default_factory=dict)

    def model_config(self):
        from ..model import model_config

        return model_config(self.preset, **self.overrides)


@dataclass
class StagesConfig:
    """Progressive training: stage k crops ``patch[k]``² patches, ``batch[k]`` per process, for a share
    ``ratio[k] / sum(ratio)`` of the iterations."""

    patch: List[int] = field(default_factory=lambda: [128, 192, 256])
    batch: List[int] = field(default_factory=lambda: [8, 4, 1])
    ratio: List[float] = field(default_factory=lambda: [192.0, 148.0, 60.0])


@dataclass
class OptimConfig:
    """Adam (L2 weight decay as in torch.optim.Adam) and gradient clipping.

    The paper says only "gradient clipping enabled"; the max norm 0.01 is Restormer's ``use_grad_clip``
    (``clip_grad_norm_(params, 0.01)``), which the paper's settings otherwise follow.

    Caution: with plain Adam the L2 term ``weight_decay * w`` is added *after* clipping, and against a
    gradient clipped to norm 0.01 it can dominate the update (for a 1.7 M-parameter net it is ~6e-3),
    pulling the residual branch to zero: a CPU run of ours stayed at the identity for 1,400 steps.
    ``decoupled=True`` uses AdamW (Restormer's optimiser), which applies the decay to the weights
    directly; the `paper` preset keeps the paper's Adam."""

    lr: float = 3e-4
    weight_decay: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 0.01
    decoupled: bool = False
    # A run from weights grown deeper (scripts/grow_blocks.py): the source network's 8 block counts;
    # the blocks beyond them in each stage (new, identity at the start) learn at lr x grown_lr_mult.
    # Adam moves a weight by about lr per step, so gates that start at zero stay near zero at a
    # fine-tuning lr (1e-3 after 200 steps at 5e-5: issue 28, session 16, arm G). Empty: no groups.
    grown_from: List[int] = field(default_factory=list)
    grown_lr_mult: float = 1.0


@dataclass
class ScheduleConfig:
    """Restormer/BasicSR ``CosineAnnealingRestartCyclicLR``; ``kind = "constant"`` keeps ``optim.lr``;
    ``kind = "cosine"``: one cosine decay from ``optim.lr`` at the start to ``eta_mins[-1]`` at ``iters``
    (``periods`` and ``restart_weights`` unused)."""

    kind: str = "cosine_restart_cyclic"
    periods: List[float] = field(default_factory=lambda: [92.0, 208.0])
    restart_weights: List[float] = field(default_factory=lambda: [1.0, 1.0])
    eta_mins: List[float] = field(default_factory=lambda: [3e-4, 1e-6])


@dataclass
class DataConfig:
    """Where pairs come from.

    kind: ``manifest`` (a prepared DPDD or any pairs manifest JSON; splits ``train_split`` /
    ``val_split``), ``pairs`` (a folder with ``source/`` + ``target/``, or a DPDD tree), or ``synth``
    (defocus pairs synthesised on the fly from the sharp images under ``path``).
    val_path: validation data (a manifest or a folder); empty = the ``val_split`` of ``path`` (a
    manifest's or a DPDD tree's ``val``; a plain ``source/`` + ``target/`` folder has no splits, so its
    own images are used: set val_path then), or, for synth, a fixed set of 8 synthetic pairs.
    val_images: validate on at most this many images (0 = all); val_crop: centre crop (0 = full image).
    synth: the synthesiser preset for ``kind = "synth"`` (``cmddcli.data.synth.SYNTH_PRESETS``: v1, v1_noisy,
    v1_jpeg, v1_jpeg_wide, v1_jpeg_gif, v2, v2_dpdd, heldout); v1's largest blur is capped at patch/8 as before.
    val_synth: preset of the synthetic validation pairs ("" = ``synth``; "heldout" validates on PSF
    shapes never trained on, to see over-fitting to the synthesiser).
    val_sharp: a folder of sharp photographs for the synthetic validation (``val_images`` pairs of
    ``val_crop``² px, default 8 of 128², fixed seed); images under it are left out of training. ""
    = procedural images.
    sharp_tiles: for ``synth`` from photographs, crop patches only inside sharp tiles of this size
    (``find_sharp_tiles``: wallpapers often have deliberate bokeh, which would teach the network to
    keep blur); 0 = anywhere in the photographs. Must be >= every stage's patch.
    sharp_scales: longest sides (px) to which the photographs are downscaled before the sharp-tile
    search (with ``sharp_tiles``); several values use each photograph at several scales (the same
    scene with more detail per pixel at the smaller ones). Default [1600].
    real_path: a folder of real blurred / sharp pairs (``blur/`` + ``sharp/``, ``source/`` + ``target/``, a
    DPDD tree's train split) mixed into a ``synth`` run (:mod:`cmddcli.data.real_pairs`).
    mix: the share (0..1) of training samples drawn from ``real_path``; the rest are synthesised. 1 =
    real pairs only (``path`` may then be empty).
    real_aspect: ``as_is`` or ``dpdd_3x2`` (resize DPDD's squashed 1024² copies back to 3:2, round disks).
    real_blur_bias: chance (0..1) that a real crop is drawn in proportion to the blur it holds.
    real_register: ``none`` or ``pixel`` (move each sharp target by the whole-pixel part of its global
    shift against the blurred shot, phase correlation; :mod:`cmddcli.data.real_pairs`).
    """

    kind: str = "manifest"
    path: str = ""
    train_split: str = "train"
    val_path: str = ""
    val_split: str = "val"
    flips: bool = True
    workers: int = 2
    val_images: int = 0
    val_crop: int = 0
    synth: str = "v2"
    val_synth: str = ""
    val_sharp: str = ""
    sharp_tiles: int = 0
    sharp_scales: List[int] = field(default_factory=lambda: [1600])
    real_path: str = ""
    mix: float = 0.0
    real_aspect: str = "as_is"
    real_blur_bias: float = 0.75
    real_register: str = "none"


@dataclass
class TrainConfig:
    """Everything a training run needs; saved (resolved) next to the checkpoints as ``config.toml``.

    iters: total optimizer steps. init_weights: a safetensors file (same model config) to start from
    instead of a random initialisation (fine-tuning; ignored by --resume, which loads the checkpoint). precision: fp32 | bf16 | fp16 (autocast; fp16 adds a GradScaler, CUDA
    only). ema_decay: 0 disables the EMA of the weights. loss: "l1" (the paper's) or "l1_fft" (L1 +
    ``fft_weight`` × L1 between FFT amplitudes, MIMO-UNet / NAFNet) or "l1_halo" (L1 + ``halo_weight`` ×
    the mean excursion beyond the input's and target's range within ``halo_window`` px, a penalty on
    over-sharpening rims) or "l2" (mean squared error, the PSNR's own loss) or "l2_halo" (l2 + the halo
    term); see :mod:`cmddcli.train.losses`. target_align: "none" or "colour" (before
    the loss, give each target crop the input's exposure and colour: a per-channel gain and offset
    fitted between their low-passed versions, :func:`cmddcli.train.losses.align_photometry`).
    anchor_weight: > 0 adds ``anchor_weight`` × the squared distance from the output of a frozen copy of
    ``init_weights`` on the same crop, away from that copy's own rims (needs ``init_weights``, also on
    resume; :func:`cmddcli.train.losses.anchor_term`): a rim term that may not shrink the correction.
    antiring: "off" or "W,M": the anti-ringing clamp the engine applies after the network
    (:mod:`cmddcli.engine.antiring`), applied in training and validation too, so the loss scores what a
    user gets; the run's exported weights name it on their card, so engines apply it.
    log_every / val_every / ckpt_every: in steps (0 disables validation / periodic checkpoints).
    keep_last: periodic checkpoints kept (plus best).
    """

    name: str = "paper"
    iters: int = 300_000
    seed: int = 0
    out: str = "runs/paper"
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    ema_decay: float = 0.0
    loss: str = "l1"
    fft_weight: float = 0.1
    halo_weight: float = 1.0
    halo_window: int = 9
    target_align: str = "none"
    anchor_weight: float = 0.0
    antiring: str = "off"
    init_weights: str = ""
    log_every: int = 100
    val_every: int = 5000
    ckpt_every: int = 5000
    keep_last: int = 3
    model: ModelSection = field(default_factory=ModelSection)
    stages: StagesConfig = field(default_factory=StagesConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> "TrainConfig":
        """Cross-field checks; raises CmddError with the offending key."""
        s = self.stages
        if not (len(s.patch) == len(s.batch) == len(s.ratio)) or not s.patch:
            raise CmddError("stages.patch, stages.batch and stages.ratio must be non-empty and equally long")
        if any(p < 16 for p in s.patch) or any(b < 1 for b in s.batch) or any(r < 0 for r in s.ratio) or sum(s.ratio) <= 0:
            raise CmddError("stages: patches must be >= 16 (BatchNorm needs a 2x2 map at 1/8 scale), batches >= 1, ratios >= 0 with a positive sum")
        if self.iters < 1:
            raise CmddError(f"iters must be >= 1, got {self.iters}")
        sc = self.schedule
        if sc.kind not in ("cosine_restart_cyclic", "cosine", "constant"):
            raise CmddError(f"schedule.kind must be cosine_restart_cyclic, cosine or constant, got {sc.kind!r}")
        if sc.kind == "cosine" and (not sc.eta_mins or not 0 <= sc.eta_mins[-1] <= self.optim.lr):
            raise CmddError("schedule.kind = cosine needs eta_mins[-1] (the final lr) in [0, optim.lr]")
        if sc.kind == "cosine_restart_cyclic":
            if not (len(sc.periods) == len(sc.restart_weights) == len(sc.eta_mins)) or not sc.periods:
                raise CmddError("schedule.periods, restart_weights and eta_mins must be equally long")
            if any(p < 0 for p in sc.periods) or sum(sc.periods) <= 0:
                raise CmddError("schedule.periods must be >= 0 with a positive sum")
        o = self.optim
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise CmddError("optim.betas must be two numbers in [0, 1)")
        if o.lr <= 0 or o.weight_decay < 0 or o.grad_clip < 0:
            raise CmddError("optim: lr must be > 0, weight_decay and grad_clip >= 0")
        if o.grown_from and (len(o.grown_from) != 8 or any(not isinstance(b, int) or b < 0 for b in o.grown_from)):
            raise CmddError(f"optim.grown_from must be the 8 block counts of the network grown from, got {o.grown_from!r}")
        if not o.grown_lr_mult > 0:
            raise CmddError(f"optim.grown_lr_mult must be > 0, got {o.grown_lr_mult}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise CmddError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        from .losses import LOSSES, TARGET_ALIGNS

        if self.loss not in LOSSES:
            raise CmddError(f"loss must be one of {', '.join(map(repr, LOSSES))} (l1 is the paper's), got {self.loss!r}")

        if self.target_align not in TARGET_ALIGNS:
            raise CmddError(f"target_align must be one of {', '.join(TARGET_ALIGNS)}, got {self.target_align!r}")
        if self.fft_weight < 0:
            raise CmddError(f"fft_weight must be >= 0, got {self.fft_weight}")
        if self.halo_weight < 0:
            raise CmddError(f"halo_weight must be >= 0, got {self.halo_weight}")
        if self.halo_window < 1 or self.halo_window % 2 == 0:
            raise CmddError(f"halo_window must be odd and >= 1, got {self.halo_window}")
        if not self.anchor_weight >= 0:
            raise CmddError(f"anchor_weight must be >= 0, got {self.anchor_weight}")
        from ..engine.antiring import AntiRing, parse_antiring

        try:
            ring = parse_antiring(self.antiring)
        except CmddError as e:
            raise CmddError(f"antiring: {e}") from None
        if ring == "card" or isinstance(self.antiring, AntiRing):
            raise CmddError(f"antiring must be \"off\" or \"W,M\" in a training config, got {self.antiring!r}")
        if self.anchor_weight > 0 and not self.init_weights:
            raise CmddError("anchor_weight > 0 needs init_weights (the frozen start the anchor holds to)")
        if not 0 <= self.ema_decay < 1:
            raise CmddError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.data.kind not in ("manifest", "pairs", "synth"):
            raise CmddError(f"data.kind must be manifest, pairs or synth, got {self.data.kind!r}")
        if self.data.sharp_tiles and (self.data.sharp_tiles < max(s.patch) or self.data.sharp_tiles < 32):
            raise CmddError(f"data.sharp_tiles ({self.data.sharp_tiles}) must be 0 or >= the largest patch "
                            f"({max(s.patch)}) and >= 32")
        scales = self.data.sharp_scales
        if not scales or any(m < max(self.data.sharp_tiles, 32) for m in scales) \
                or len(set(scales)) != len(scales):
            raise CmddError(f"data.sharp_scales must be distinct whole pixel sizes >= data.sharp_tiles, "
                            f"got {scales}")
        from ..data.synth import SYNTH_PRESETS

        for key, name in (("data.synth", self.data.synth), ("data.val_synth", self.data.val_synth or self.data.synth)):
            if name not in SYNTH_PRESETS:
                raise CmddError(f"{key} must be one of {', '.join(SYNTH_PRESETS)}, got {name!r}")
        d = self.data
        if not 0 <= d.mix <= 1:
            raise CmddError(f"data.mix (the share of real pairs) must be in [0, 1], got {d.mix}")
        if d.mix > 0 and (d.kind != "synth" or not d.real_path):
            raise CmddError("data.mix > 0 needs data.kind = \"synth\" and data.real_path (a folder of real pairs)")
        from ..data.real_pairs import REAL_ASPECTS, REAL_REGISTERS

        if d.real_aspect not in REAL_ASPECTS:
            raise CmddError(f"data.real_aspect must be one of {', '.join(REAL_ASPECTS)}, got {d.real_aspect!r}")
        if d.real_register not in REAL_REGISTERS:
            raise CmddError(f"data.real_register must be one of {', '.join(REAL_REGISTERS)}, got {d.real_register!r}")
        if not 0 <= d.real_blur_bias <= 1:
            raise CmddError(f"data.real_blur_bias must be in [0, 1], got {d.real_blur_bias}")
        if min(self.log_every, self.val_every, self.ckpt_every, self.keep_last, self.data.workers) < 0:
            raise CmddError("log_every, val_every, ckpt_every, keep_last and data.workers must be >= 0")
        self.model.model_config()  # raises on an unknown preset or bad override
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = {"preset": self.model.preset, **self.model.overrides}
        return d


# ---------------------------------------------------------------- derived quantities


def scaled_lengths(ratio: Iterable[float], total: int) -> List[int]:
    """Split `total` in proportion to `ratio`: cumulative ends are rounded, so lengths sum to `total`.

    >>> scaled_lengths([192, 148, 60], 300_000)
    [144000, 111000, 45000]
    """
    ratio = [float(r) for r in ratio]
    s = sum(ratio)
    ends, acc = [], 0.0
    for r in ratio:
        acc += r
        ends.append(int(round(total * acc / s)))
    ends[-1] = total
    return [e - b for b, e in zip([0] + ends[:-1], ends)]


def stage_bounds(cfg: TrainConfig) -> List[int]:
    """Cumulative stage ends in iterations: iteration i (1-based) runs in the first stage k with
    ``i <= bounds[k]`` (BasicSR's rule). For the paper at 300k: [144000, 255000, 300000]."""
    ends, acc = [], 0
    for n in scaled_lengths(cfg.stages.ratio, cfg.iters):
        acc += n
        ends.append(acc)
    return ends


# ---------------------------------------------------------------- presets


def _paper() -> TrainConfig:
    return TrainConfig()


def _tiny() -> TrainConfig:
    """Seconds on a laptop CPU: the `tiny` model on synthetic pairs, small patches."""
    return TrainConfig(
        name="tiny",
        iters=200,
        out="runs/tiny",
        log_every=10,
        val_every=100,
        ckpt_every=100,
        keep_last=2,
        model=ModelSection(preset="tiny"),
        stages=StagesConfig(patch=[32, 48, 64], batch=[4, 2, 1], ratio=[192.0, 148.0, 60.0]),
        data=DataConfig(kind="synth", workers=0, val_images=4, val_crop=64),
    )


TRAIN_PRESETS = {
    "paper": (_paper, "the paper's recipe (SPEC §4): 300k iterations, 128/192/256 patches, Adam 3e-4"),
    "tiny": (_tiny, "tests and smoke runs: tiny model, 32/48/64 patches, 200 iterations, synthetic data"),
}


def train_preset(name: str) -> TrainConfig:
    """A fresh :class:`TrainConfig` for the named preset (``paper``, ``tiny``; see ``TRAIN_PRESETS``).

    Raises CmddError for an unknown name. The result is a new object: change it freely."""
    if name not in TRAIN_PRESETS:
        raise CmddError(f"unknown training preset {name!r}; choose from {', '.join(TRAIN_PRESETS)}")
    return TRAIN_PRESETS[name][0]()
