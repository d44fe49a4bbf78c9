"""Strength, --mask, --focus auto, the defocus map, metadata and per-tile progress."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from _nets import random_net
from cmddcli.cli.main import app
from cmddcli.data.synth import synthesize
from cmddcli.engine import Deblurrer
from cmddcli.engine.blend import STRENGTH_MAX, blend, feather, linear_to_srgb, srgb_to_linear
from cmddcli.engine.blurmap import estimate_blur_map, focus_mask, spearman
from cmddcli.engine.strength import RestoreOptions, finish
from cmddcli.errors import CmddError

TOL = 1 / 255


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    import cmddcli.runtime as D

    monkeypatch.setattr(D, "available_cores", lambda: 1)


def dead_leaves(h, w, seed, n=700, rmin=2.0, rmax=30.0):
    """Occluding discs with a power-law size distribution: edges at every scale, like a photo."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 0.5, np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    r = (rmin ** -2 - rng.random(n) * (rmin ** -2 - rmax ** -2)) ** -0.5
    for k in range(n):
        cy, cx = rng.uniform(-rmax, h + rmax), rng.uniform(-rmax, w + rmax)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r[k] ** 2] = rng.uniform(0.05, 0.95, 3)
    return img


def distance_to(mask):
    """Euclidean distance (px) of every pixel to the nearest True pixel of ``mask``."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(~mask)


# ------------------------------------------------------------------------------------ strength


def test_strength_0_1_and_the_bound():
    rng = np.random.default_rng(0)
    x = rng.random((20, 24, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1).astype(np.float32)
    assert np.abs(blend(x, y, 0.0) - x).max() <= TOL
    assert np.array_equal(blend(x, y, 1.0), y)  # today's output, bit for bit
    half = blend(x, y, 0.5)  # halfway in linear light, not in sRGB values
    assert np.allclose(srgb_to_linear(half), (srgb_to_linear(x) + srgb_to_linear(y)) / 2, atol=1e-5)
    top = blend(x, y, STRENGTH_MAX)
    lin_x, lin_y, lin_t = srgb_to_linear(x), srgb_to_linear(y), srgb_to_linear(top)
    assert np.all(np.abs(lin_t - lin_x) <= STRENGTH_MAX * np.abs(lin_y - lin_x) + 1e-5)  # the stated limit
    assert np.allclose(lin_t, np.clip(lin_x + STRENGTH_MAX * (lin_y - lin_x), 0, 1), atol=1e-5)
    for bad in (-0.1, STRENGTH_MAX + 0.01, float("nan")):
        with pytest.raises(CmddError, match="strength"):
            blend(x, y, bad)
    assert np.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-6)


def test_cli_strength_0_and_1(tmp_path, tiny_weights):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    pixels = (rng.random((32, 40, 3)) * 200 + 20).astype(np.uint8)
    Image.fromarray(pixels).save(src / "p.png")
    outs = {}
    for s in ("0", "1", "1.5"):
        out = tmp_path / f"out{s}"
        r = CliRunner().invoke(app, ["deblur", str(src), "-o", str(out), "--strength", s, "--json",
                                     "--weights", str(tiny_weights)], catch_exceptions=False)
        assert r.exit_code == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["settings"]["restore"]["strength"] == float(s)
        assert summary["files"][0]["restore"]["strength"] == float(s)
        im = Image.open(out / "p.png")
        assert f"strength {float(s):g}" in im.getexif()[270] and im.getexif()[305].startswith("cmdd")
        outs[s] = np.asarray(im).astype(int)
    assert np.abs(outs["0"] - pixels).max() <= 1
    engine = Deblurrer(tiny_weights, device="cpu")
    today = np.rint(engine.restore(pixels.astype(np.float32) / 255) * 255).astype(int)
    assert np.array_equal(outs["1"], today)
    assert np.abs(outs["1.5"] - pixels).sum() > np.abs(outs["1"] - pixels).sum()
    r = CliRunner().invoke(app, ["deblur", str(src), "-o", str(tmp_path / "x"), "--strength", "2"])
    assert r.exit_code == 1 and "--strength must be between 0 and 1.5" in " ".join(r.stderr.split())


# ------------------------------------------------------------------------------------ mask


def test_feather_is_at_most_8px():
    m = np.zeros((20, 40), np.float32)
    m[:, 20:] = 1
    f = feather(m)
    soft = np.flatnonzero((f[10] > 0) & (f[10] < 1))
    assert len(soft) == 8 and soft.min() >= 16 and soft.max() <= 23
    assert np.all(f[:, :16] == 0) and np.all(f[:, 24:] == 1)


def test_mask_keeps_black_restores_white(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.random((64, 80, 3)).astype(np.float32)
    net = random_net("tiny")
    y = Deblurrer(model=net, device="cpu").restore(x)
    m = np.zeros((64, 80), np.uint8)
    m[:, 40:] = 255
    m[:8, :8] = 128  # grey: half way
    Image.fromarray(m).save(tmp_path / "mask.png")
    got = finish(x, y, RestoreOptions(mask=tmp_path / "mask.png")).rgb
    assert np.abs(got[12:, :36] - x[12:, :36]).max() <= TOL  # black (beyond the 4-px feather)
    assert np.array_equal(got[:, 44:], y[:, 44:])  # white: exactly the full deblur
    lin = srgb_to_linear
    assert np.allclose(lin(got[:2, :2]), (lin(x[:2, :2]) + lin(y[:2, :2])) / 2, atol=0.01)
    Image.fromarray(m[:60]).save(tmp_path / "small.png")
    with pytest.raises(CmddError, match=r"small.png: mask is 80x60 but the photo is 80x64"):
        finish(x, y, RestoreOptions(mask=tmp_path / "small.png"))


def test_cli_mask_errors(tmp_path, tiny_weights):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(src / "p.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "m.png")
    args = ["deblur", str(src), "-o", str(tmp_path / "o"), "--weights", str(tiny_weights)]
    r = CliRunner().invoke(app, args + ["--mask", str(tmp_path / "m.png"), "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["files"][0]["reason"].endswith("m.png: mask is 8x8 but the photo is 16x16 "
                                                              "(it must be the photo's size)")
    r = CliRunner().invoke(app, args + ["--mask", str(tmp_path / "none.png")])
    assert r.exit_code == 1 and "none.png: mask not found" in " ".join(r.stderr.split())
    r = CliRunner().invoke(app, args + ["--mask", str(tmp_path / "m.png"), "--focus", "auto"])
    assert r.exit_code == 1 and "cannot be used together" in " ".join(r.stderr.split())


# ------------------------------------------------------------------------------------ blur map, focus auto


def scene(seed, h=192, w=240):
    """A sharp-ish subject (CoC 1.6 px) in front of a strongly blurred background (CoC 8 px)."""
    yy, xx = np.mgrid[0:h, 0:w]
    subject = ((yy - h / 2) / 48.0) ** 2 + ((xx - w / 2) / 56.0) ** 2 <= 1
    disparity = np.where(subject, 0.8, 0.0).astype(np.float32)
    return subject, synthesize(dead_leaves(h, w, seed), seed, disparity=disparity, focus=1.0, max_coc=8.0)


def test_blur_map_ranks_true_coc():
    subject, s = scene(0)
    m = estimate_blur_map(s.blurred)
    assert m.shape == subject.shape and m.dtype == np.float32
    assert spearman(m, s.coc) > 0.5
    assert np.median(m[subject]) < np.median(m[~subject])
    a = np.array([1.0, 2, 2, 3])
    assert spearman(a, np.array([10.0, 20, 20, 30])) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)


@pytest.mark.parametrize("seed", range(12))
def test_focus_auto_keeps_background_restores_subject(seed):
    # The condition, on every scene: the background more than 32 px from the subject (about
    # five of the map's 6-px aggregation windows) is kept within 1/255 of the input, and the
    # subject more than 8 px inside its outline is exactly the full deblur. Measured on seeds 0-29
    # and other blur sizes in docs/photographer.md.
    subject, s = scene(seed)
    x = s.blurred
    y = Deblurrer(model=random_net("tiny"), device="cpu").restore(x)
    fin = finish(x, y, RestoreOptions(focus="auto"))
    far_bg = distance_to(subject) > 32
    inside = distance_to(~subject) > 8
    kept = (np.abs(fin.rgb - x) <= TOL).all(-1)
    assert kept[far_bg].all(), f"{(~kept[far_bg]).sum()} far-background pixels changed"
    assert np.abs(fin.rgb - y)[inside].max() <= TOL  # the subject: exactly the full deblur
    assert np.abs(y - x)[inside].max() > 0.05  # the subject really changed
    assert 0.1 < fin.restored_fraction < 0.6


def test_focus_auto_restores_everything_without_a_blurred_background():
    x = synthesize(dead_leaves(96, 96, 3), 3, disparity=np.full((96, 96), 0.5, np.float32), focus=0.0,
                   max_coc=3.0).blurred
    r = focus_mask(estimate_blur_map(x))
    assert r.threshold is None and np.all(r.mask == 1) and "whole photo" in r.warning


def test_cli_focus_auto_saves_maps(tmp_path, tiny_weights):
    _, s = scene(0, 96, 128)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.rint(s.blurred * 255).astype(np.uint8)).save(src / "s.png")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["deblur", str(src), "-o", str(out), "--focus", "auto", "--save-blur-map", "--json",
                                 "--weights", str(tiny_weights)], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["files"][0]
    assert row["restore"]["restore"] == "focus auto"
    names = ["s_blurmap.png"] + (["s_restoremask.png"] if row["restore"]["restored_fraction"] < 1 else [])
    assert (out / "s_restoremask.png").is_file() == (len(names) == 2)
    for name in names:
        with Image.open(out / name) as im:
            assert im.size == (128, 96) and im.mode == "L"


# ------------------------------------------------------------------------------------ progress


def test_progress_advances_per_tile(tmp_path):
    from cmddcli.engine import runner as batch
    from cmddcli.photo import Photo, write_photo

    write_photo(tmp_path / "big.png", Photo(rgb=np.random.default_rng(0).random((96, 160, 3)).astype(np.float32)))
    calls = []

    class Rec(batch.BatchProgress):
        def tiles(self, done, total):
            calls.append((done, total))

    engine = Deblurrer(model=random_net("tiny"), device="cpu", tile=48, overlap=16)
    job = batch.Job(tmp_path / "big.png", tmp_path / "out" / "big.png")
    res = batch.process_job(job, engine, batch.BatchOptions(out_dir=tmp_path / "out"), Rec())
    assert res.status == "done"
    total = calls[-1][1]
    assert total > 4 and [d for d, _ in calls] == list(range(total + 1))
