"""Anti-ringing clamp (cmddcli.engine.antiring): the fast local range against scipy.ndimage, the clamp's
bounds, its settings on the card and on the command line, and the engine applying it after stitching."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from cmddcli.cli.main import app
from cmddcli.engine import AntiRing, Deblurrer
from cmddcli.engine.antiring import local_range, parse_antiring, resolve_antiring
from cmddcli.errors import CmddError, WeightsError


class Overshoot(nn.Module):
    """Unsharp masking by a 3x3 box: rings (goes beyond the local range) at every edge, and is local
    (receptive field radius 1), so tiles reproduce the whole image exactly."""

    def forward(self, x):
        blur = nn.functional.avg_pool2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
        return x + 2.0 * (x - blur)


def reference_range(x: np.ndarray, window: int):
    """scipy's min / max filters per (B, C) plane; mode nearest = the square cut at the edges."""
    lo = np.stack([[ndimage.minimum_filter(p, size=window, mode="nearest") for p in b] for b in x])
    hi = np.stack([[ndimage.maximum_filter(p, size=window, mode="nearest") for p in b] for b in x])
    return lo, hi


@pytest.mark.parametrize("window", [1, 3, 5, 9, 15])
@pytest.mark.parametrize("shape", [(1, 3, 37, 52), (2, 1, 6, 5), (1, 3, 1, 20)])
def test_local_range_equals_scipy(window, shape, rng):
    x = torch.rand(shape, generator=rng)
    lo, hi = local_range(x, window)
    ref_lo, ref_hi = reference_range(x.numpy(), window)
    assert lo.shape == x.shape and hi.shape == x.shape
    np.testing.assert_array_equal(lo.numpy(), ref_lo)  # min / max pick values: exact, no tolerance
    np.testing.assert_array_equal(hi.numpy(), ref_hi)


@pytest.mark.parametrize("window,margin,band", [(3, 0.0, 64), (9, 4.0, 64), (11, 2.5, 64), (11, 4.0, 7), (9, 1.0, 1)])
def test_clamp_keeps_the_output_within_the_widened_range_and_leaves_the_rest(window, margin, band, rng, monkeypatch):
    """Against scipy's filters and np.clip; bands of rows smaller than the window's reach give the same."""
    import cmddcli.engine.antiring as A

    monkeypatch.setattr(A, "BAND_ROWS", band)
    inp = torch.rand(2, 3, 40, 48, generator=rng)
    out = inp + 0.4 * (torch.rand(2, 3, 40, 48, generator=rng) - 0.5)
    res = AntiRing(window, margin).apply(out, inp)
    lo, hi = reference_range(inp.numpy(), window)
    m = margin / 255
    expected = np.clip(out.numpy(), lo - m, hi + m)
    np.testing.assert_allclose(res.numpy(), expected, rtol=0, atol=1e-7)  # float32 rounding of lo - m
    inside = (out.numpy() >= lo - m) & (out.numpy() <= hi + m)
    assert inside.any() and (~inside).any()  # the case tests both sides of the clamp
    np.testing.assert_array_equal(res.numpy()[inside], out.numpy()[inside])  # untouched where inside
    assert out.shape == res.shape and not torch.equal(res, out)


def test_settings_are_checked_and_parsed():
    for bad in (8, 1, 0, -3, 9.0, True):
        with pytest.raises(CmddError, match="window"):
            AntiRing(bad, 4)
    for bad in (-1, float("nan"), float("inf"), "4", True):
        with pytest.raises(CmddError, match="margin"):
            AntiRing(9, bad)
    assert parse_antiring("card") == "card" and parse_antiring(" CARD ") == "card"
    assert parse_antiring("off") is None and parse_antiring(None) is None
    assert parse_antiring("9,4") == AntiRing(9, 4.0) and parse_antiring("11, 2.5") == AntiRing(11, 2.5)
    for bad in ("9", "9,4,1", "x,4", "", "8,4"):
        with pytest.raises(CmddError):
            parse_antiring(bad)
    assert AntiRing(9, 4).describe() == "9 px window, 4 levels"


def test_card_entries_resolve_or_fail_naming_the_file():
    card = {"antiring": AntiRing(9, 4).to_card()}
    assert resolve_antiring("card", card) == AntiRing(9, 4.0)
    assert resolve_antiring("card", {}) is None  # a card that names none: no clamp
    assert resolve_antiring("off", card) is None
    assert resolve_antiring("5,1", card) == AntiRing(5, 1.0)  # the user's setting wins
    for bad in ({"window": 8, "margin": 4}, {"window": 9}, [9, 4], {"window": 9, "margin": -1, "x": 0}):
        with pytest.raises(WeightsError, match="w.safetensors: unusable anti-ringing"):
            resolve_antiring("card", {"antiring": bad}, "w.safetensors")


def test_engine_applies_it_after_stitching_tiles(rng):
    x = torch.rand(1, 3, 150, 170, generator=rng)
    plain = Deblurrer(model=Overshoot(), device="cpu", precision="fp32", tile=0)
    assert plain.antiring is None and plain.describe()["antiring"] == "off"  # a model passed in: no card
    ring = AntiRing(9, 4)
    whole = Deblurrer(model=Overshoot(), device="cpu", precision="fp32", tile=0, antiring=ring)
    tiled = Deblurrer(model=Overshoot(), device="cpu", precision="fp32", tile=64, overlap=16, antiring="9,4")
    y0, y1, y2 = plain.restore_tensor(x), whole.restore_tensor(x), tiled.restore_tensor(x)
    expected = ring.apply(Overshoot()(x), x).clamp(0, 1)
    torch.testing.assert_close(y1, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(y2, y1, rtol=0, atol=1e-5)  # the clamp sees the whole stitched image
    lo, hi = local_range(x, 9)
    assert float((y0 - hi).max()) > 0.1  # the unclamped network rings ...
    assert float((y1 - hi).max()) <= 4 / 255 + 1e-6 and float((lo - y1).max()) <= 4 / 255 + 1e-6  # ... clamped not
    assert whole.describe()["antiring"] == "9 px window, 4 levels"


@pytest.fixture(scope="module")
def carded_weights(tmp_path_factory):
    """tiny random weights whose card names anti-ringing 3 px, 0 levels (strong, so it shows)."""
    from _nets import random_net

    from cmddcli.model.weights import save_weights

    path = tmp_path_factory.mktemp("weights") / "carded.safetensors"
    save_weights(random_net("tiny"), path, metadata={"antiring": AntiRing(3, 0).to_card()}, preset="tiny")
    return path


def test_the_cards_setting_is_what_deblur_and_eval_apply(tmp_path, carded_weights, monkeypatch):
    import cmddcli.runtime as D

    monkeypatch.setattr(D, "available_cores", lambda: 1)
    rng = np.random.default_rng(0)
    a = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
    x = a.astype(np.float32) / 255
    eng = Deblurrer(carded_weights, device="cpu", precision="fp32", tile=0)
    assert eng.antiring == AntiRing(3, 0.0)
    off = Deblurrer(carded_weights, device="cpu", precision="fp32", tile=0, antiring="off")
    y, y_off = eng.restore(x), off.restore(x)
    lo, hi = (t[0].permute(1, 2, 0).numpy() for t in local_range(torch.from_numpy(x).permute(2, 0, 1)[None], 3))
    assert np.all(y <= hi + 1e-6) and np.all(y >= lo - 1e-6)
    assert np.abs(y - y_off).max() > 1 / 255  # the random network rings, so the clamp changed something

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(a).save(src / "a.png")
    runner = CliRunner()
    r = runner.invoke(app, ["deblur", str(src), "-o", str(out), "--weights", str(carded_weights), "--json",
                            "--precision", "fp32"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    written = np.asarray(Image.open(out / "a.png")).astype(np.float32) / 255
    assert np.abs(written - y).max() <= 1 / 255 + 1e-6  # the card's clamp, up to 8-bit rounding
    r = runner.invoke(app, ["deblur", str(src), "-o", str(out), "--weights", str(carded_weights), "--json",
                            "--precision", "fp32", "--antiring", "off"], catch_exceptions=False)
    reason = json.loads(r.stdout)["files"][0]["reason"]  # another clamp: not kept silently
    assert r.exit_code == 1 and "other settings (engine.antiring)" in reason

    pairs = tmp_path / "pairs"
    (pairs / "blur").mkdir(parents=True)
    (pairs / "sharp").mkdir()
    Image.fromarray(a).save(pairs / "blur" / "p.png")
    Image.fromarray(a[::-1].copy()).save(pairs / "sharp" / "p.png")
    summaries = {}
    for setting in ("card", "off"):
        r = runner.invoke(app, ["eval", "--weights", str(carded_weights), "--data", str(pairs), "--json",
                                "--antiring", setting, "--metrics", "psnr"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        summaries[setting] = json.loads(r.stdout)
    text = json.dumps(summaries["card"])
    assert "3 px window, 0 levels" in text and '"antiring": "off"' in json.dumps(summaries["off"])


@pytest.mark.parametrize("command", ["deblur", "eval"])
def test_a_bad_setting_is_one_line_and_nothing_is_made(tmp_path, tiny_weights, command):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "a.png")
    args = (["deblur", str(src), "-o", str(tmp_path / "out")] if command == "deblur"
            else ["eval", "--pred", str(src), "--target", str(src)])
    r = CliRunner().invoke(app, args + ["--weights", str(tiny_weights), "--antiring", "8,4"])
    assert r.exit_code != 0
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "window must be an odd whole number" in lines[0]
    assert not (tmp_path / "out").exists()


def test_packaging_writes_the_setting_on_the_card(tmp_path, tiny_weights, monkeypatch, capsys):
    """scripts/package_default_weights.py --antiring W,M: the card names it and an engine applies it;
    a bad setting stops the script with one line before anything is written."""
    import importlib.util
    import sys
    from pathlib import Path

    from _nets import random_net

    from cmddcli.model.weights import read_metadata, save_weights

    spec = importlib.util.spec_from_file_location(
        "package_default_weights", Path(__file__).resolve().parents[1] / "scripts" / "package_default_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = tmp_path / "run.safetensors"
    save_weights(random_net("tiny"), run, preset="tiny",
                 metadata={"train": {"step": 10, "config": {"data": {"kind": "synth", "synth": "v1_noisy"}}}})
    out = tmp_path / "packaged.safetensors"
    monkeypatch.setattr(sys, "argv", ["package", str(run), "--dtype", "fp32", "--out", str(out), "--antiring", "11,4"])
    mod.main()
    assert read_metadata(out)["antiring"] == {"window": 11, "margin": 4.0}
    assert Deblurrer(out, device="cpu").antiring == AntiRing(11, 4.0)
    bad = tmp_path / "bad.safetensors"
    for setting in ("10,4", "off"):
        monkeypatch.setattr(sys, "argv", ["package", str(run), "--out", str(bad), "--antiring", setting])
        with pytest.raises(SystemExit, match="^error: .*"):
            mod.main()
    assert not bad.exists()
