"""PSNR / SSIM / MAE against scikit-image on random images (SPEC §3)."""

import math

import numpy as np
import pytest

from cmddcli.eval import metrics as M
from cmddcli.errors import BackendUnavailable, CmddError

skm = pytest.importorskip("skimage.metrics")

SHAPES = [(33, 47, 3), (64, 40), (7, 9, 3), (120, 96, 3)]


def _pair(shape, seed, noise=0.1):
    rng = np.random.default_rng(seed)
    target = rng.random(shape)
    pred = np.clip(target + noise * rng.standard_normal(shape), 0, 1)
    return pred, target


def _sk_ssim(pred, target, **kw):
    axis = -1 if pred.ndim == 3 else None
    return skm.structural_similarity(target, pred, data_range=1.0, channel_axis=axis, **kw)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_psnr_ssim_mae_match_skimage(shape, seed):
    pred, target = _pair(shape, seed)
    assert M.psnr(pred, target) == pytest.approx(skm.peak_signal_noise_ratio(target, pred, data_range=1.0), abs=1e-6)
    assert M.ssim(pred, target) == pytest.approx(_sk_ssim(pred, target), abs=1e-6)
    assert M.mae(pred, target) == pytest.approx(np.abs(pred - target).mean(), abs=1e-12)


@pytest.mark.parametrize("shape", [(33, 47, 3), (64, 40), (11, 15, 3)])
def test_gaussian_ssim_matches_skimage(shape):
    pred, target = _pair(shape, 3, noise=0.2)
    ref = _sk_ssim(pred, target, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert M.ssim(pred, target, window="gaussian") == pytest.approx(ref, abs=1e-6)


def test_float32_and_quantised_inputs():
    pred, target = _pair((50, 60, 3), 7)
    p8, t8 = np.round(pred * 255) / 255, np.round(target * 255) / 255
    assert M.ssim(p8.astype(np.float32), t8.astype(np.float32)) == pytest.approx(_sk_ssim(p8, t8), abs=1e-6)
    assert M.psnr(p8.astype(np.float32), t8) == pytest.approx(
        skm.peak_signal_noise_ratio(t8, p8, data_range=1.0), abs=1e-5)


def test_identical_images():
    _, t = _pair((20, 20, 3), 0)
    assert M.psnr(t, t) == math.inf
    assert M.ssim(t, t) == pytest.approx(1.0, abs=1e-12)
    assert M.mae(t, t) == 0.0


def test_mask_restricts_scoring():
    pred, target = _pair((40, 30, 3), 5)
    full = np.ones((40, 30), bool)
    assert M.psnr(pred, target, mask=full) == pytest.approx(M.psnr(pred, target), abs=1e-12)
    assert M.ssim(pred, target, mask=full) == pytest.approx(M.ssim(pred, target), abs=1e-12)
    top = np.zeros((40, 30), bool)
    top[:10] = True
    assert M.psnr(pred, target, mask=top) == pytest.approx(M.psnr(pred[:10], target[:10]), abs=1e-12)
    assert M.mae(pred, target, mask=top) == pytest.approx(M.mae(pred[:10], target[:10]), abs=1e-12)
    S, pad = M.ssim_map(pred, target)
    assert M.ssim(pred, target, mask=top) == pytest.approx(S[pad:10, pad:-pad].mean(), abs=1e-12)


def test_errors():
    with pytest.raises(CmddError, match="shapes differ"):
        M.psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(CmddError, match="smaller than"):
        M.ssim(np.zeros((5, 9, 3)), np.zeros((5, 9, 3)))
    with pytest.raises(CmddError, match="unknown metric"):
        M.parse_metric_names("psnr,foo")
    with pytest.raises(CmddError, match="selects no pixels"):
        M.psnr(np.zeros((4, 4)), np.zeros((4, 4)), mask=np.zeros((4, 4), bool))


def test_compute_metrics_and_lpips_is_optional():
    pred, target = _pair((16, 16, 3), 2)
    out = M.compute_metrics(pred, target, ["psnr", "ssim", "mae"])
    assert list(out) == ["psnr", "ssim", "mae"]
    try:
        import lpips  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="pip install lpips"):
            M.compute_metrics(pred, target, ["lpips"])
