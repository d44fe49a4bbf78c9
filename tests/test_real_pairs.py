"""Issue 28: real pairs as training crops (cmddcli.data.real_pairs), mixed with synthesis; the target's
photometry fitted to the input (train.losses.align_photometry); colour-fair PSNR and input scores in eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cmddcli.cli.main import app
from cmddcli.data.real_pairs import (
    MixedDataset, RealCropDataset, RealPair, blur_score_blocks, dpdd_3x2_height, pair_shift, real_pairs_from,
    register_pixel)
from cmddcli.data.datasets import SynthDataset
from cmddcli.errors import CmddError, InputError
from cmddcli.eval import metrics as M
from cmddcli.eval import protocol as E
from cmddcli.photo.arrays import write_png
from cmddcli.train.config import TrainConfig, train_preset
from cmddcli.train.losses import align_photometry, make_loss
from cmddcli.train.sampling import SeededDataset

from test_data_datasets import sharp_dir  # noqa: F401 - fixture


def _box_blur(img: np.ndarray, r: int) -> np.ndarray:
    out = img.astype(np.float64)
    for axis in (0, 1):
        pad = [(r, r) if a == axis else (0, 0) for a in range(3)]
        p = np.pad(out, pad, mode="edge")
        c = np.cumsum(p, axis=axis)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
        n = img.shape[axis]
        out = (np.take(c, range(2 * r + 1, 2 * r + 1 + n), axis=axis) - np.take(c, range(0, n), axis=axis)) / (2 * r + 1)
    return out


@pytest.fixture()
def real_dir(tmp_path):
    """Four 96x128 pairs: sharp noise texture; the blurred image is blurred in its left half only."""
    rng = np.random.default_rng(0)
    root = tmp_path / "real"
    for i in range(4):
        sharp = rng.uniform(0, 1, (96, 128, 3))
        blurred = sharp.copy()
        blurred[:, :64] = _box_blur(sharp, 3)[:, :64]
        write_png(root / "blur" / f"p{i}.png", (blurred * 255).round().astype(np.uint8))
        write_png(root / "sharp" / f"p{i}.png", (sharp * 255).round().astype(np.uint8))
    return root


def test_blur_score_is_where_the_blurred_image_lost_detail(real_dir):
    pairs = real_pairs_from(real_dir)
    assert [p.name for p in pairs] == ["p0", "p1", "p2", "p3"]
    ds = RealCropDataset(pairs, patch_size=32, block=16)
    src, tgt, weights = ds.decoded(0)
    score = blur_score_blocks(src, tgt, 16)
    assert score.shape == (6, 8)
    assert score[:, :4].min() > 0.05 and score[:, 5:].max() < 1e-6  # left half blurred, right half identical
    assert score[:, 4].max() < 0.1 * score[:, :4].min()  # (its first column touches the blurred half)
    assert weights.shape == ((96 - 32) // 16 + 1, (128 - 32) // 16 + 1)


def test_crops_prefer_blur_and_keep_the_pair_aligned(real_dir):
    pairs = real_pairs_from(real_dir)
    biased = RealCropDataset(pairs, patch_size=32, block=16, blur_bias=1.0, flips=False)
    uniform = RealCropDataset(pairs, patch_size=32, block=16, blur_bias=0.0, flips=False)
    xs_b = [biased.crop_origin(0, np.random.default_rng(s))[1] for s in range(200)]
    xs_u = [uniform.crop_origin(0, np.random.default_rng(s))[1] for s in range(200)]
    blurred_b = np.clip(64 - np.array(xs_b), 0, 32) / 32  # share of each crop's columns that are blurred
    blurred_u = np.clip(64 - np.array(xs_u), 0, 32) / 32
    assert np.mean(blurred_b > 0) > 0.97  # (almost) every biased crop holds blur
    assert np.mean(blurred_u == 0) > 0.3  # uniform crops also land in the sharp half
    assert blurred_b.mean() > blurred_u.mean() + 0.2
    # a crop's sharp half is pixel-identical in both images, whatever symmetry was drawn
    ds = RealCropDataset(pairs, patch_size=96, block=16, blur_bias=0.0, flips=True)
    for s in range(8):
        ds.rng_for = lambda _i, s=s: np.random.default_rng(s)
        x, y = ds[0]
        assert x.shape == y.shape == (3, 96, 96)
        same = (x - y).abs().amax(0) < 1e-6
        assert 0.2 < same.float().mean() < 0.8  # part sharp (equal), part blurred (different)


def test_dpdd_3x2_aspect_restores_the_frame(real_dir):
    assert dpdd_3x2_height(1024) == 683
    ds = RealCropDataset(real_pairs_from(real_dir), patch_size=32, aspect="dpdd_3x2")
    src, tgt, _ = ds.decoded(1)
    assert src.shape == tgt.shape == (85, 128, 3) and src.dtype == np.uint8
    with pytest.raises(ValueError):
        RealCropDataset(real_pairs_from(real_dir), aspect="square")


@pytest.mark.parametrize("dy, dx", [(3, -2), (-1, 0), (0, 0), (2.4, -0.6)])
def test_pixel_registration_undoes_a_shifted_target(tmp_path, dy, dx):
    """A sharp target taken (dy, dx) px off the blurred shot (blurred in its left half, in focus in its
    right half, as a DPDD pair): after register = "pixel" the crops line up again (to the nearest pixel;
    a sub-pixel remainder is left as it is)."""
    from scipy.ndimage import shift as nd_shift

    rng = np.random.default_rng(1)
    scene = _box_blur(rng.uniform(0, 1, (140, 150, 3)), 1)  # texture with a little correlation
    # the target shows scene[y - dy, x - dx] at (y, x): the scene moved by (dy, dx)
    sharp = np.stack([nd_shift(scene[..., c], (dy, dx), order=3, mode="reflect") for c in range(3)], -1)
    blurred = scene.copy()
    blurred[:, :75] = _box_blur(scene, 4)[:, :75]  # as in DPDD, part of the frame is in focus in both shots
    assert pair_shift(blurred, sharp) == pytest.approx((-dy, -dx), abs=0.15)
    b, s = register_pixel(blurred, sharp, pair_shift(blurred, sharp))
    ry, rx = round(dy), round(dx)
    assert b.shape == s.shape == (140 - abs(ry), 150 - abs(rx), 3)
    inner = (slice(8, -8), slice(8, -8))
    expected = scene[max(-ry, 0):140 - max(ry, 0), max(-rx, 0):150 - max(rx, 0)]  # scene under blurred b
    residual = np.stack([nd_shift(expected[..., c], (dy - ry, dx - rx), order=3) for c in range(3)], -1)
    assert np.abs(s - residual)[inner].max() < 1e-3  # the target is now the scene under b (plus the remainder)
    for i in range(2):
        write_png(tmp_path / "blur" / f"q{i}.png", (blurred * 255).round().clip(0, 255).astype(np.uint8))
        write_png(tmp_path / "sharp" / f"q{i}.png", (sharp * 255).round().clip(0, 255).astype(np.uint8))
    ds = RealCropDataset(real_pairs_from(tmp_path), patch_size=64, block=16, register="pixel")
    src, tgt, _ = ds.decoded(0)
    assert src.shape == tgt.shape == b.shape and ds.shifts[0] == pytest.approx((-dy, -dx), abs=0.15)
    plain = RealCropDataset(real_pairs_from(tmp_path), patch_size=64, block=16)
    assert plain.decoded(0)[0].shape == (140, 150, 3) and plain.shifts == {}
    with pytest.raises(ValueError, match="register"):
        RealCropDataset(real_pairs_from(tmp_path), register="subpixel")


def test_bad_real_pairs_are_named(tmp_path, real_dir):
    big = RealCropDataset(real_pairs_from(real_dir), patch_size=256)
    with pytest.raises(InputError, match="smaller than the 256px patch"):
        big.decoded(0)
    write_png(tmp_path / "x" / "blur" / "a.png", np.zeros((40, 40, 3), np.uint8))
    write_png(tmp_path / "x" / "sharp" / "a.png", np.zeros((40, 48, 3), np.uint8))
    ds = RealCropDataset(real_pairs_from(tmp_path / "x"), patch_size=16)
    with pytest.raises(InputError, match="a.png.*differs"):
        ds.decoded(0)


def test_mixed_dataset_share_and_reproducibility(real_dir, sharp_dir):  # noqa: F811
    real = RealCropDataset(real_pairs_from(real_dir), patch_size=32, block=16)
    synth = SynthDataset([str(p) for p in sorted(sharp_dir.glob("*.png"))], patch_size=32, max_side=256, length=50)
    mixed = MixedDataset(real, synth, 0.5, seed=1)
    wrapped = SeededDataset(mixed, in_worker=False)
    a = [wrapped[(i, 1000 + i)] for i in range(40)]
    b = [wrapped[(i, 1000 + i)] for i in range(40)]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    on_grid = [bool(torch.allclose(x * 255, (x * 255).round(), atol=1e-3)) for x, _ in a]
    assert 8 < sum(on_grid) < 32  # about half the samples are real (8-bit) crops, the rest synthesised
    only_real = SeededDataset(MixedDataset(real, synth, 1.0), in_worker=False)
    assert all(torch.allclose(only_real[(i, i)][0] * 255, (only_real[(i, i)][0] * 255).round(), atol=1e-3)
               for i in range(5))


def test_align_photometry_undoes_an_exposure_difference_but_not_blur():
    g = torch.Generator().manual_seed(0)
    scene = torch.nn.functional.interpolate(torch.rand(2, 3, 4, 4, generator=g), size=64, mode="bilinear")
    sharp = 0.1 + 0.7 * scene + 0.1 * torch.rand(2, 3, 64, 64, generator=g)  # shading plus fine texture
    inp = torch.nn.functional.avg_pool2d(sharp, 5, stride=1, padding=2, count_include_pad=False)
    gain = torch.tensor([0.8, 1.0, 1.2]).view(1, 3, 1, 1)
    target = (sharp - 0.05) / gain  # another exposure / white balance of the same scene
    aligned = align_photometry(target, inp)
    assert torch.allclose(aligned.mean((-2, -1)), inp.mean((-2, -1)), atol=0.02)
    assert (aligned - sharp).abs().mean() < 0.25 * (target - sharp).abs().mean()
    detail = aligned - torch.nn.functional.avg_pool2d(aligned, 5, stride=1, padding=2, count_include_pad=False)
    blurred_detail = inp - torch.nn.functional.avg_pool2d(inp, 5, stride=1, padding=2, count_include_pad=False)
    assert detail.std() > 2 * blurred_detail.std()  # the fine detail is still the target's
    same = align_photometry(sharp, sharp)
    assert torch.allclose(same, sharp, atol=1e-5)  # identity when nothing differs
    loss = make_loss("l1", target_align="colour")
    assert float(loss(sharp, target, inp)) < float(make_loss("l1")(sharp, target, inp))
    with pytest.raises(CmddError, match="blurred input"):
        loss(sharp, target)
    with pytest.raises(CmddError):
        make_loss("l1", target_align="shift")


def test_psnr_cf_forgives_gain_and_offset_only():
    rng = np.random.default_rng(1)
    t = rng.uniform(0.1, 0.8, (32, 32, 3))
    shifted = np.clip(t * np.array([0.9, 1.0, 1.1]) + 0.03, 0, 1)
    assert M.psnr_cf(shifted, t) > 60 > M.psnr(shifted, t)
    noisy = np.clip(t + rng.normal(0, 0.05, t.shape), 0, 1)
    assert abs(M.psnr_cf(noisy, t) - M.psnr(noisy, t)) < 0.2  # no gain or offset to remove: ~ PSNR
    assert M.psnr_cf(noisy, t) >= M.psnr(noisy, t) - 1e-9
    mask = np.zeros((32, 32), bool)
    mask[:16] = True
    assert M.psnr_cf(shifted, t, mask=mask) > 60
    assert M.compute_metrics(shifted, t, ["psnr_cf"])["psnr_cf"] == M.psnr_cf(shifted, t)


def test_eval_reports_input_scores_and_gains(tmp_path, tiny_weights):
    rng = np.random.default_rng(2)
    for i in range(2):
        sharp = rng.uniform(0, 1, (40, 48, 3))
        write_png(tmp_path / "d" / "source" / f"im{i}.png", (_box_blur(sharp, 2) * 255).round().astype(np.uint8))
        write_png(tmp_path / "d" / "target" / f"im{i}.png", (sharp * 255).round().astype(np.uint8))
    res = CliRunner().invoke(app, ["eval", "--weights", str(tiny_weights), "--data", str(tmp_path / "d"),
                                   "--device", "cpu", "--out", str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)["summary"][-1]
    assert set(summary["means"]) == {"psnr", "ssim", "mae", "psnr_cf"}
    inp = E.evaluate_predictions(E.items_from_predictions(tmp_path / "d" / "source", tmp_path / "d" / "target"))
    assert summary["input_means"]["psnr"] == pytest.approx(inp.overall().means["psnr"])
    assert summary["gains"]["psnr"] == pytest.approx(summary["means"]["psnr"] - summary["input_means"]["psnr"])
    header = (tmp_path / "o" / "per_image.csv").read_text().splitlines()[0].split(",")
    assert {"input_psnr", "input_psnr_cf", "gain_psnr", "gain_psnr_cf"} <= set(header)
    # saved predictions without inputs: no input columns, no gains
    res = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "d" / "source"), "--target",
                                   str(tmp_path / "d" / "target"), "--json"])
    assert json.loads(res.stdout)["summary"][-1]["input_means"] is None


def test_mix_config_is_checked():
    cfg = train_preset("tiny")
    cfg.data.kind, cfg.data.mix = "synth", 0.5
    with pytest.raises(CmddError, match="real_path"):
        cfg.validate()
    cfg.data.real_path = "somewhere"
    cfg.validate()
    for key, value in (("mix", 1.5), ("real_aspect", "round"), ("real_blur_bias", -0.1), ("real_register", "sub")):
        bad = train_preset("tiny")
        bad.data.kind, bad.data.real_path, bad.data.mix = "synth", "x", 0.5
        setattr(bad.data, key, value)
        with pytest.raises(CmddError):
            bad.validate()
    bad = TrainConfig()
    bad.target_align = "shift"
    with pytest.raises(CmddError, match="target_align"):
        bad.validate()


def test_a_mixed_run_trains_resumes_and_logs_colour_fair_validation(tmp_path, real_dir):
    """A tiny run on 50 % real crops + 50 % procedural synthesis with the colour-aligned target: the
    validation log has the colour-fair PSNR and the gains over the input, and a resumed run draws the
    same batches as an uninterrupted one (same losses and weights up to float rounding: two straight
    runs of this size in one process already differ in the 7th digit on CPU)."""
    import csv

    from cmddcli.train.loop import train
    from test_train_loop import tiny_cfg

    def cfg(out):
        return tiny_cfg(out, "iters=4", "stages.patch=[32]", "stages.batch=[2]", "stages.ratio=[1]",
                        'data.kind="synth"', 'data.path=""', f'data.real_path="{real_dir}"', "data.mix=0.5",
                        'target_align="colour"', f'data.val_path="{real_dir}"', "data.val_crop=32", "val_every=2",
                        "data.workers=0", "ema_decay=0")

    whole = train(cfg(tmp_path / "a"))
    first = train(cfg(tmp_path / "b"), stop_at=2)
    resumed = train(cfg(tmp_path / "b"), resume=str(tmp_path / "b"))
    assert len(resumed.losses) == 2
    assert first.losses + resumed.losses == pytest.approx(whole.losses, rel=1e-4)
    for k, v in whole.model.state_dict().items():
        assert torch.allclose(v.float(), resumed.model.state_dict()[k].float(), atol=1e-5), k
    rows = list(csv.DictReader((tmp_path / "a" / "val_log.csv").read_text().splitlines()))
    assert [r["step"] for r in rows] == ["2", "4"]
    for r in rows:
        assert float(r["psnr_cf"]) > 0 and abs(float(r["gain"])) < 10 and r["gain_cf"] != ""
