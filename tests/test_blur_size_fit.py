"""scripts/blur_size_fit.py: per-tile disk radius from a blurred/sharp pair."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from cmddcli.data.synth import linear_to_srgb, srgb_to_linear, synth_preset, synthesize

_spec = importlib.util.spec_from_file_location(
    "blur_size_fit", Path(__file__).resolve().parents[1] / "scripts" / "blur_size_fit.py")
fit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fit)


def _texture(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.05, 0.95, (h // 4, w // 4, 3))
    return np.kron(img, np.ones((4, 4, 1)))[:h, :w].astype(np.float32)  # 4-px blocks: edges at every scale


@pytest.mark.parametrize("radius", [0.0, 3.0, 8.0])
def test_a_uniform_disk_blur_is_found(radius):
    """A pair from the training synthesiser itself (flat depth: every pixel has CoC radius ``radius``),
    not from the estimator's own blur."""
    sharp = _texture(192, 240)
    flat = np.zeros(sharp.shape[:2], np.float32)
    blurred = synthesize(sharp, 0, synth_preset("v1"), disparity=flat, focus=1.0, max_coc=radius).blurred
    r, detail = fit.fit_radii(blurred, sharp, tile=48)
    assert r.shape == detail.shape == (4 * 5,)
    assert np.mean(r == radius) >= 0.9, r


def test_gain_and_offset_do_not_change_the_radius():
    """The f/4 and f/22 shots differ in exposure: a gain and offset per channel must not move the fit."""
    sharp = _texture(96, 96, seed=1)
    lin = fit.disk_blur(srgb_to_linear(sharp), 5.0) * np.array([0.9, 1.0, 1.1], np.float32) + 0.02
    r, _ = fit.fit_radii(linear_to_srgb(np.clip(lin, 0, 1)), sharp, tile=48)
    assert (r == 5.0).all(), r


def test_summary_keeps_textured_tiles_and_mismatch_raises():
    s = fit.summarise(np.array([1.0, 1.0, 12.0, 12.0]), np.array([0.0, 0.0, 2.0, 3.0]))
    assert s["tiles"] == 2 and s["median"] == 12.0 and s["share_ge_10"] == 1.0
    with pytest.raises(ValueError):
        fit.fit_radii(np.zeros((40, 40, 3)), np.zeros((40, 40, 3)))
