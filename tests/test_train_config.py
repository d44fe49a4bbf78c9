"""Training config (presets, TOML, typed overrides), the lr schedule and the progressive stages."""

import math

import pytest

from cmddcli.errors import CmddError
from cmddcli.train.config import TRAIN_PRESETS, scaled_lengths, stage_bounds, train_preset
from cmddcli.train.overrides import apply_overrides, load_config, parse_override, to_toml
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


# ---------------------------------------------------------------- AdamW + cosine, l1_fft, synth presets


def test_cosine_schedule_decays_once_from_lr_to_the_last_eta_min(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('preset = "tiny"\niters = 1000\nloss = "l1_fft"\n[optim]\nlr = 1e-3\ndecoupled = true\n'
                 '[schedule]\nkind = "cosine"\neta_mins = [1e-6]\n')
    cfg = load_config(p).validate()
    assert cfg.optim.decoupled and cfg.loss == "l1_fft" and cfg.fft_weight == 0.1
    s = LRSchedule.from_config(cfg)
    assert s(0) == pytest.approx(1e-3) and s(1000) == pytest.approx(1e-6)
    assert s(500) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    lrs = [s(i) for i in range(0, 1001, 50)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # strictly decreasing, no flat part, no restart
    with pytest.raises(CmddError, match="schedule.kind"):
        apply_overrides(cfg, ["schedule.kind=cosine_warm"]).validate()


def test_loss_option_and_fft_amplitude_loss():
    import torch

    from cmddcli.train.losses import fft_amplitude_l1, make_loss

    torch.manual_seed(0)
    y = torch.rand(2, 3, 16, 16)
    pred = y + 0.05 * torch.randn_like(y)
    l1 = make_loss("l1")(pred, y)
    assert torch.allclose(l1, (pred - y).abs().mean())
    amp = (torch.fft.rfft2(pred).abs() - torch.fft.rfft2(y).abs()).abs().mean()
    assert torch.allclose(fft_amplitude_l1(pred, y), amp)
    assert torch.allclose(make_loss("l1_fft", 0.1)(pred, y), l1 + 0.1 * amp)
    assert torch.allclose(make_loss("l1_fft", 0.0)(pred, y), l1)
    # amplitudes ignore a circular shift (phase), the pixel L1 does not
    shifted = torch.roll(y, 3, dims=-1)
    assert fft_amplitude_l1(shifted, y) < 1e-5 < make_loss("l1")(shifted, y)
    pred.requires_grad_(True)
    make_loss("l1_fft")(pred, y).backward()
    assert torch.isfinite(pred.grad).all()
    with pytest.raises(CmddError, match="loss"):
        apply_overrides(train_preset("tiny"), ["loss=l1_l2"]).validate()
    with pytest.raises(CmddError, match="fft_weight"):
        apply_overrides(train_preset("tiny"), ["fft_weight=-1"]).validate()


def test_trainer_uses_the_configured_loss():
    import torch

    from cmddcli.runtime import DistInfo
    from cmddcli.train.loop import Trainer

    cfg = apply_overrides(train_preset("tiny"), ["loss=l1_fft", "fft_weight=0.5", "optim.decoupled=true",
                                                 "schedule.kind=cosine", "iters=4"]).validate()
    t = Trainer(cfg, DistInfo(device=torch.device("cpu")))
    assert isinstance(t.opt, torch.optim.AdamW)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = t.net(x)
    want = (out - y).abs().mean() + 0.5 * (torch.fft.rfft2(out).abs() - torch.fft.rfft2(y).abs()).abs().mean()
    assert t.loss_fn(out, y).item() == pytest.approx(want.item(), rel=1e-5)


def test_synth_preset_keys(tmp_path):
    from cmddcli.train.data import data_source, synth_config_for

    cfg = apply_overrides(train_preset("tiny"), ['data.synth="v2_dpdd"', 'data.val_synth="heldout"']).validate()
    assert (cfg.data.synth, cfg.data.val_synth) == ("v2_dpdd", "heldout")
    with pytest.raises(CmddError, match="data.synth"):
        apply_overrides(train_preset("tiny"), ['data.synth="v3"']).validate()
    with pytest.raises(CmddError, match="data.val_synth"):
        apply_overrides(train_preset("tiny"), ['data.val_synth="nope"']).validate()
    assert synth_config_for(128, "v1").max_coc == (1.0, 16.0)
    assert synth_config_for(128, "v2").max_coc == (0.5, 20.0) == synth_config_for(256, "v2").max_coc
    assert synth_config_for(128, "v2_dpdd").target_residual == pytest.approx(4 / 22)
    src = data_source(cfg)
    train = src.train_dataset(32, 0)
    val = src.val_dataset()
    assert train.config.target_residual > 0 and {k for k, _ in val.config.psf_family} == {"polygon", "ring"}
    x, y = val[0]
    assert x.shape == y.shape == (3, 64, 64)


def test_val_sharp_photos_are_left_out_of_training(tmp_path):
    import numpy as np
    from PIL import Image

    from cmddcli.train.data import data_source

    rng = np.random.default_rng(0)
    for sub in ("train", "val"):
        (tmp_path / sub).mkdir()
        for i in range(2):
            Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8)).save(tmp_path / sub / f"{i}.png")
    cfg = apply_overrides(train_preset("tiny"), ["data.kind=synth", f'data.path="{tmp_path}"',
                                                 f'data.val_sharp="{tmp_path / "val"}"',
                                                 'data.val_synth="heldout"']).validate()
    src = data_source(cfg)
    train, val = src.train_dataset(32, 0), src.val_dataset()
    assert sorted(p.parent.name for p in train.sources) == ["train", "train"]
    assert sorted(p.parent.name for p in val.sources) == ["val", "val"]
    x, y = val[1]
    assert x.shape == y.shape == (3, 64, 64) and not torch_equal(x, y)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_sharp_tiles_restrict_patches_to_sharp_regions(tmp_path):
    import numpy as np
    from PIL import Image

    from cmddcli.train.data import data_source

    rng = np.random.default_rng(0)
    img = np.full((128, 256, 3), 0.5, np.float32)
    img[:, :128] = rng.random((128, 128, 3))  # left half: texture (sharp), right half: flat
    Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / "half.png")
    cfg = apply_overrides(train_preset("tiny"), ["data.kind=synth", f'data.path="{tmp_path}"',
                                                 "data.sharp_tiles=64"]).validate()
    src = data_source(cfg)
    ds = src.train_dataset(32, 0)
    assert ds.sources and all(t.x + t.size <= 128 for t in ds.sources)
    assert src.train_dataset(48, 1).sources == ds.sources and len(src._tiles) == 1  # found once
    with pytest.raises(CmddError, match="sharp_tiles"):
        apply_overrides(cfg, ["data.sharp_tiles=48"]).validate()


def test_sharp_scales_add_each_photograph_at_several_scales(tmp_path):
    """data.sharp_scales: tiles found at every listed size; each sample is cropped from the scale its
    tile was found at (a crop of the 128-px copy of a 256-px photo is not a crop of the original)."""
    import numpy as np
    from PIL import Image

    from cmddcli.train.data import data_source

    rng = np.random.default_rng(0)
    img = (rng.random((256, 256, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "tex.png")
    base = ["data.kind=synth", f'data.path="{tmp_path}"', "data.sharp_tiles=64"]
    one = data_source(apply_overrides(train_preset("tiny"), base).validate()).train_dataset(32, 0)
    cfg = apply_overrides(train_preset("tiny"), base + ["data.sharp_scales=[256, 128]"]).validate()
    two = data_source(cfg).train_dataset(32, 0)
    assert {t.max_side for t in one.sources} == {1600}  # the default: one scale (the photo is smaller)
    assert {t.max_side for t in two.sources} == {256, 128}
    assert len(two.sources) == len(one.sources) + len([t for t in two.sources if t.max_side == 128]) > len(one.sources)
    assert two._image(str(tmp_path / "tex.png"), 128).shape == (128, 128, 3)
    x, y = two[0]
    assert x.shape == y.shape == (3, 32, 32)
    for bad in ("[]", "[16]", "[256, 256]"):
        with pytest.raises(CmddError, match="sharp_scales"):
            apply_overrides(cfg, [f"data.sharp_scales={bad}"]).validate()


def test_halo_loss_charges_only_excursions_beyond_the_local_range():
    import numpy as np
    import torch
    from scipy.ndimage import maximum_filter, minimum_filter

    from cmddcli.train.losses import local_range, make_loss, range_excursion

    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 20, 24), torch.rand(2, 3, 20, 24)
    lo, hi = local_range(a, b, window=5)
    # reference: scipy's min/max filters (mode "nearest" == a window cut at the border) of both images
    an, bn = a.numpy(), b.numpy()
    ref_lo = np.minimum(minimum_filter(an, (1, 1, 5, 5), mode="nearest"), minimum_filter(bn, (1, 1, 5, 5), mode="nearest"))
    ref_hi = np.maximum(maximum_filter(an, (1, 1, 5, 5), mode="nearest"), maximum_filter(bn, (1, 1, 5, 5), mode="nearest"))
    np.testing.assert_allclose(lo.numpy(), ref_lo, atol=0)
    np.testing.assert_allclose(hi.numpy(), ref_hi, atol=0)

    # a step edge: blurred input = a ramp, target = the step; an output that undershoots by 0.2 beside the
    # edge is charged 0.2 there, a blurrier output (inside the input's range) and the target are not
    x = torch.linspace(0, 1, 32)
    target = (x > 0.5).float().expand(1, 3, 16, 32).contiguous()
    blurred = x.clamp(0.3, 0.7).sub(0.3).div(0.4).expand(1, 3, 16, 32).contiguous()
    rim = target.clone()
    rim[..., 14] = -0.2
    loss = make_loss("l1_halo", halo_weight=2.0, halo_window=9)
    l1 = make_loss("l1")
    under, over = range_excursion(rim, blurred, target, 9)
    assert under[..., 14].allclose(torch.tensor(0.2)) and under.sum() == under[..., 14].sum() and over.sum() == 0
    assert loss(rim, target, blurred).item() == pytest.approx(l1(rim, target).item() + 2.0 * under.mean().item(), rel=1e-6)
    assert loss(target, target, blurred).item() == 0
    assert loss(blurred, target, blurred).item() == pytest.approx(l1(blurred, target).item(), rel=1e-6)
    assert make_loss("l1_halo", halo_weight=0.0)(rim, target, blurred).item() == pytest.approx(l1(rim, target).item())
    pred = rim.clone().requires_grad_(True)
    loss(pred, target, blurred).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[..., 14].abs().min() > pred.grad[..., 3].abs().max()
    with pytest.raises(CmddError, match="blurred input"):
        loss(rim, target)
    with pytest.raises(CmddError, match="window"):
        make_loss("l1_halo", halo_window=4)
    with pytest.raises(CmddError, match="halo_weight"):
        apply_overrides(train_preset("tiny"), ["loss=l1_halo", "halo_weight=-1"]).validate()
    with pytest.raises(CmddError, match="halo_window"):
        apply_overrides(train_preset("tiny"), ["loss=l1_halo", "halo_window=0"]).validate()


def test_trainer_passes_the_input_to_the_halo_loss():
    import torch

    from cmddcli.runtime import DistInfo
    from cmddcli.train.loop import Trainer

    cfg = apply_overrides(train_preset("tiny"), ["loss=l1_halo", "halo_weight=3", "halo_window=5",
                                                 "iters=4"]).validate()
    t = Trainer(cfg, DistInfo(device=torch.device("cpu")))
    torch.manual_seed(1)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    seen = []
    plain = t.loss_fn
    t.loss_fn = lambda pred, target, inp=None, ref=None: seen.append((pred.detach(), target, inp)) or plain(pred, target, inp)
    loss, gn, lr = t.iteration(x, y, 1)
    assert math.isfinite(loss)
    pred, target, inp = seen[0]
    assert torch.equal(target, y) and torch.equal(inp, x)  # the blurred input, not the target or the output
    from cmddcli.train.losses import range_excursion
    u, o = range_excursion(pred, x, y, 5)
    assert loss == pytest.approx(((pred - y).abs().mean() + 3 * (u + o).mean()).item(), rel=1e-5)


def test_l2_loss_is_the_mean_squared_error_and_validates():
    """loss = "l2": the mean squared error (with or without the target's colour aligned first);
    "l2_halo" adds the halo term; an unknown loss is refused by name."""
    import torch

    from cmddcli.train.losses import align_photometry, make_loss

    g = torch.Generator().manual_seed(0)
    pred, target, inp = (torch.rand(2, 3, 32, 32, generator=g) for _ in range(3))
    assert make_loss("l2")(pred, target).item() == pytest.approx(((pred - target) ** 2).mean().item(), rel=1e-6)
    aligned = make_loss("l2", target_align="colour")(pred, target, inp).item()
    assert aligned == pytest.approx(((pred - align_photometry(target, inp)) ** 2).mean().item(), rel=1e-6)
    assert aligned != pytest.approx(make_loss("l2")(pred, target).item(), rel=1e-3)
    apply_overrides(train_preset("tiny"), ["loss=l2"]).validate()
    # l2_halo: the MSE plus the l1_halo penalty term (charged where pred leaves the local range)
    from cmddcli.train.losses import range_excursion

    under, over = range_excursion(pred, inp, target, 9)
    assert make_loss("l2_halo", halo_weight=0.5)(pred, target, inp).item() == pytest.approx(
        ((pred - target) ** 2).mean().item() + 0.5 * (under + over).mean().item(), rel=1e-6)
    assert (under + over).mean() > 0
    with pytest.raises(CmddError, match="blurred input"):
        make_loss("l2_halo")(pred, target)
    with pytest.raises(CmddError, match="'l2'"):
        apply_overrides(train_preset("tiny"), ["loss=l3"]).validate()


def test_anchor_term_holds_the_reference_away_from_its_rims():
    """anchor_term: (pred - ref)² where ref draws no rim; nothing within the halo window of ref's rims;
    make_loss adds it with its weight (against the aligned target) and refuses a missing ref."""
    import torch

    from cmddcli.train.losses import anchor_term, make_loss

    x = torch.linspace(0, 1, 48)
    target = (x > 0.5).float().expand(1, 3, 16, 48).contiguous()  # a step edge at column 24
    blurred = x.clamp(0.3, 0.7).sub(0.3).div(0.4).expand(1, 3, 16, 48).contiguous()
    ref = target.clone()
    assert anchor_term(ref, ref, blurred, target, 9).item() == 0
    pred = ref + 0.1
    assert anchor_term(pred, ref, blurred, target, 9).item() == pytest.approx(0.01, rel=1e-5)  # no rim: all kept
    rimmed = ref.clone()
    rimmed[..., 23] = -0.2  # a dark rim beside the edge (below input and target)
    full = anchor_term(pred, rimmed, blurred, target, 9)
    moved = pred.clone()
    moved[..., 19:28] = 5.0  # anything within 4 px of the rim column is free
    assert anchor_term(moved, rimmed, blurred, target, 9).item() == pytest.approx(full.item(), rel=1e-6)
    moved[..., 18] = 5.0  # 5 px away: held
    assert anchor_term(moved, rimmed, blurred, target, 9).item() > full.item()
    # a tolerance of one 8-bit level: a ref 0.5 level outside the range is no rim
    faint = ref.clone()
    faint[..., 23] = -0.5 / 255
    assert anchor_term(faint + 0.1, faint, blurred, target, 9).item() == pytest.approx(0.01, rel=1e-4)

    g = torch.Generator().manual_seed(0)
    p, t, i, r = (torch.rand(2, 3, 32, 32, generator=g) for _ in range(4))
    loss = make_loss("l2_halo", halo_weight=0.5, target_align="colour", anchor_weight=2.0)
    plain = make_loss("l2_halo", halo_weight=0.5, target_align="colour")
    from cmddcli.train.losses import align_photometry

    expect = plain(p, t, i).item() + 2.0 * anchor_term(p, r, i, align_photometry(t, i), 9).item()
    assert loss(p, t, i, r).item() == pytest.approx(expect, rel=1e-6)
    assert loss(p, t, i, p).item() == pytest.approx(plain(p, t, i).item(), rel=1e-6)
    with pytest.raises(CmddError, match="reference output"):
        loss(p, t, i)
    with pytest.raises(CmddError, match="anchor_weight"):
        make_loss("l2", anchor_weight=-1)
    with pytest.raises(CmddError, match="anchor_weight"):
        apply_overrides(train_preset("tiny"), ["anchor_weight=-0.5"]).validate()
    with pytest.raises(CmddError, match="init_weights"):
        apply_overrides(train_preset("tiny"), ["anchor_weight=1"]).validate()
