"""Training config (presets, TOML, typed overrides), the lr schedule and the progressive stages."""

import math

import pytest

from cmddcli.errors import CmddError
from cmddcli.train.config import (
    TRAIN_PRESETS,
    apply_overrides,
    load_config,
    parse_override,
    scaled_lengths,
    stage_bounds,
    to_toml,
    train_preset,
)
from cmddcli.train.schedule import (
    LRSchedule,
    cosine_restart_cyclic_lr,
    stage_at,
    stages_of,
)


@pytest.mark.parametrize("name", sorted(TRAIN_PRESETS))
def test_every_preset_validates_and_round_trips_through_toml(name, tmp_path):
    cfg = train_preset(name).validate()
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg


def test_paper_preset_is_spec_section_4():
    cfg = train_preset("paper")
    assert cfg.iters == 300_000
    assert (cfg.stages.patch, cfg.stages.batch) == ([128, 192, 256], [8, 4, 1])
    assert stage_bounds(cfg) == [144_000, 255_000, 300_000]  # 192:148:60 scaled to 300k
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas) == (3e-4, 1e-4, [0.9, 0.999])
    assert cfg.optim.grad_clip == 0.01 and cfg.loss == "l1"
    sched = LRSchedule.from_config(cfg)
    assert sched.periods == (92_000, 208_000)
    assert sched.eta_mins == (3e-4, 1e-6) and sched.restart_weights == (1.0, 1.0)
    assert cfg.model.model_config().width == 36


def test_scaled_lengths_sum_to_total():
    assert scaled_lengths([192, 148, 60], 300_000) == [144_000, 111_000, 45_000]
    assert scaled_lengths([192, 148, 60], 400_000) == [192_000, 148_000, 60_000]
    for total in (1, 7, 999, 12345):
        assert sum(scaled_lengths([192, 148, 60], total)) == total


def _basicsr_lr(it, base, periods, weights, eta_mins):
    """BasicSR's CosineAnnealingRestartCyclicLR.get_lr, transcribed (last_epoch = it)."""
    cumulative = [sum(periods[: i + 1]) for i in range(len(periods))]
    idx = next(i for i, c in enumerate(cumulative) if it <= c)
    nearest_restart = 0 if idx == 0 else cumulative[idx - 1]
    return eta_mins[idx] + weights[idx] * 0.5 * (base - eta_mins[idx]) * (
        1 + math.cos(math.pi * ((it - nearest_restart) / periods[idx])))


@pytest.mark.parametrize("it", [0, 1, 5_000, 91_999, 92_000, 92_001, 150_000, 196_000, 250_000, 299_999, 300_000])
def test_schedule_matches_restormer_formula(it):
    sched = LRSchedule.from_config(train_preset("paper"))
    ref = _basicsr_lr(it, 3e-4, [92_000, 208_000], [1, 1], [3e-4, 1e-6])
    assert sched(it) == pytest.approx(ref, rel=1e-12, abs=1e-15)


def test_schedule_shape():
    sched = LRSchedule.from_config(train_preset("paper"))
    assert all(sched(i) == pytest.approx(3e-4) for i in (1, 50_000, 92_000))  # flat first period
    assert sched(196_000) == pytest.approx((3e-4 + 1e-6) / 2)  # cosine midpoint
    assert sched(300_000) == pytest.approx(1e-6)
    tail = [sched(i) for i in range(92_000, 300_001, 1000)]
    assert all(a >= b for a, b in zip(tail, tail[1:]))
    assert sched(400_000) == pytest.approx(1e-6)  # clamped past the end
    # scaled to another total
    short = LRSchedule.from_config(apply_overrides(train_preset("paper"), ["iters=3000"]))
    assert short.periods == (920, 2080) and short(3000) == pytest.approx(1e-6)
    # restart weights scale the second cycle: 1 -> 0 over period 1, then 0.5 -> 0 over period 2
    lrs = [cosine_restart_cyclic_lr(i, 1.0, [10, 10], [1, 0.5], [0.0, 0.0]) for i in (0, 10, 11, 20)]
    assert lrs == pytest.approx([1.0, 0.0, 0.25 * (1 + math.cos(math.pi / 10)), 0.0], abs=1e-12)


def test_stage_changes_at_the_right_iterations():
    cfg = train_preset("paper")
    assert [stage_at(cfg, i).index for i in (1, 144_000, 144_001, 255_000, 255_001, 300_000)] == [0, 0, 1, 1, 2, 2]
    assert [(s.patch, s.batch, s.start, s.end) for s in stages_of(cfg)] == [
        (128, 8, 0, 144_000), (192, 4, 144_000, 255_000), (256, 1, 255_000, 300_000)]


def test_overrides_are_typed_and_unknown_keys_rejected():
    cfg = apply_overrides(train_preset("tiny"), [
        "optim.lr=1e-3", "iters=50", "stages.batch=[2, 2, 1]", "model.width=12", 'data.kind="manifest"',
        "data.path=some/where.json", "ema_decay=0", "compile=true"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.iters == 50 and cfg.stages.batch == [2, 2, 1]
    assert cfg.model.model_config().width == 12
    assert cfg.data.path == "some/where.json" and cfg.compile is True and cfg.ema_decay == 0.0
    assert parse_override("schedule.eta_mins=[3e-4, 1e-6]") == ("schedule.eta_mins", [3e-4, 1e-6])
    bad = {
        "optim.lrr=1": "unknown config key 'optim.lrr'",
        "bogus=1": "unknown config key 'bogus'",
        "iters=1.5": "expects int",
        "optim.lr=fast": "expects float",
        "compile=1": "expects bool",
        "model.wdth=3": "unknown config key 'model.wdth'",
        "stages.patch=[16, x]": "expects",
        "iters": "key=value",
    }
    for text, msg in bad.items():
        with pytest.raises(CmddError, match=msg.replace("[", r"\[")):
            apply_overrides(train_preset("tiny"), [text])


def test_config_file_errors(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('preset = "tiny"\niters = 10\n[optim]\nlr = 0.001\n')
    cfg = load_config(p)
    assert (cfg.name, cfg.iters, cfg.optim.lr) == ("tiny", 10, 0.001)
    p.write_text("[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(CmddError, match="unknown config key 'optim.learning_rate'"):
        load_config(p)
    p.write_text("iters = \n")
    with pytest.raises(CmddError, match="not a valid TOML"):
        load_config(p)
    with pytest.raises(CmddError, match="stages"):
        apply_overrides(train_preset("tiny"), ["stages.batch=[1, 2]"]).validate()
    with pytest.raises(CmddError, match="unknown training preset"):
        train_preset("huge")
