"""The defocus synthesiser: determinism, identity at the focal plane, blur growing with depth,
no leakage across occlusion edges, disk PSF, options."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cmddcli.data.synth import (
    SynthConfig,
    disk_kernel,
    linear_to_srgb,
    random_disparity,
    render_defocus,
    slice_disparity,
    srgb_to_linear,
    synthesize,
)

PLAIN = SynthConfig(noise_prob=0.0, jpeg_prob=0.0)


def _texture(h=96, w=96, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def _hf_energy(img: np.ndarray) -> float:
    """Mean squared Laplacian: high-frequency energy."""
    g = img.mean(axis=2)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float((lap ** 2).mean())


def test_same_seed_same_bytes_different_seed_differs():
    img = _texture()
    cfg = SynthConfig(noise_prob=1.0, jpeg_prob=1.0)
    a, b, c = synthesize(img, 7, cfg), synthesize(img, 7, cfg), synthesize(img, 8, cfg)
    assert a.blurred.tobytes() == b.blurred.tobytes()
    assert a.disparity.tobytes() == b.disparity.tobytes()
    assert a.params == b.params
    assert a.blurred.tobytes() != c.blurred.tobytes()
    assert a.sharp is not None and np.array_equal(a.sharp, img)


def test_everything_at_the_focal_plane_is_unchanged():
    img = _texture()
    disp = np.full(img.shape[:2], 0.4, np.float32)
    s = synthesize(img, 0, PLAIN, disparity=disp, focus=0.4, max_coc=12.0)
    np.testing.assert_allclose(s.blurred, img, atol=2e-6)
    assert s.coc.max() < 1e-3


def test_srgb_round_trip():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=2e-6)


def test_disk_kernel():
    assert disk_kernel(0.0).shape == (1, 1)
    k = disk_kernel(5.0)
    assert k.shape == (13, 13) and abs(k.sum() - 1) < 1e-6
    c = k[6, 6]
    assert np.allclose(k[6, 2:11], c) and 0 < k[6, 1] < c and k[6, 0] == 0  # flat top, 1 px rim, nothing
    assert k[0, 0] == 0 and k[1, 1] == 0  # corners outside the circle
    hard = disk_kernel(5.0, antialias=False)
    assert len(np.unique(hard)) == 2 and hard[6, 1] == hard[6, 6] and hard[6, 0] == 0  # 0 or one constant
    soft = disk_kernel(5.0, soft_edge=2.0)
    assert soft.shape[0] > k.shape[0] and (soft > 0).sum() > (k > 0).sum()
    # a disk, not a Gaussian: the profile is flat inside the radius
    assert np.ptp(k[6, 3:10]) == 0


def test_blur_grows_with_distance_from_the_focal_plane():
    img = _texture(96, 4 * 64, seed=1)
    levels = [0.2, 0.4, 0.6, 0.8]
    disp = np.repeat(np.repeat(np.array(levels, np.float32)[None], 96, 0), 64, 1)  # four vertical bands
    lin = srgb_to_linear(img)
    out, coc = render_defocus(lin, disp, focus=0.2, coc_scale=10.0)
    radii = [float(coc[0, 64 * i + 32]) for i in range(4)]
    assert radii == pytest.approx([0.0, 2.0, 4.0, 6.0], abs=1e-5)
    margin = 8
    energy = [_hf_energy(out[margin:-margin, 64 * i + margin:64 * (i + 1) - margin]) for i in range(4)]
    ref = _hf_energy(lin[margin:-margin, margin:64 - margin])
    assert energy[0] == pytest.approx(ref, rel=1e-4)  # in focus: untouched
    assert energy[0] > energy[1] > energy[2] > energy[3]


def test_no_leakage_across_an_occlusion_edge():
    h, w = 80, 80
    rng = np.random.default_rng(0)
    lin = np.zeros((h, w, 3), np.float32)
    lin[..., 1] = rng.random((h, w))  # background: green texture only
    lin[..., 2] = 0.5  # and a constant blue level
    disp = np.full((h, w), 0.1, np.float32)
    disp[20:60, 20:60] = 0.9
    lin[20:60, 20:60] = [1.0, 0.0, 0.0]  # foreground: pure red square
    # sharp foreground, strongly blurred background
    out, _ = render_defocus(lin, disp, focus=0.9, coc_scale=10.0)
    np.testing.assert_array_equal(out[20:60, 20:60], lin[20:60, 20:60])  # the foreground is untouched
    bg = np.ones((h, w), bool)
    bg[20:60, 20:60] = False
    assert out[..., 0][bg].max() < 1e-6  # no red bleeds into the blurred background
    np.testing.assert_allclose(out[..., 2][bg], 0.5, atol=1e-5)  # and no dark halo next to the edge
    # blurred foreground over a sharp background: the blur spreads at most its radius (8 px)
    out2, _ = render_defocus(lin, disp, focus=0.1, coc_scale=10.0)
    far = np.ones((h, w), bool)
    far[20 - 9:60 + 9, 20 - 9:60 + 9] = False
    np.testing.assert_allclose(out2[far], lin[far], atol=1e-6)
    assert out2[20:60, 15:20, 0].max() > 0.05  # but it does spread over the background near the edge


def test_slices_keep_constant_layers_and_bound_the_radius_step():
    disp = np.zeros((10, 10), np.float32)
    disp[:, 5:] = np.linspace(0.3, 1.0, 5)[None]
    labels, d, radii = slice_disparity(disp, coc_scale=20.0, focus=0.0, radius_step=0.5)
    assert d[0] == 0.0 and radii[0] == 0.0  # the constant far layer is one slice of its own
    assert np.all(np.diff(d) > 0)  # far to near
    within = np.abs(20.0 * disp - radii[labels])
    assert within.max() <= 0.5 + 1e-6


def test_random_depth_maps():
    for mode in ("layers", "planes", "blobs", "mixed"):
        d = random_disparity(64, 80, np.random.default_rng(3), mode)
        assert d.shape == (64, 80) and d.dtype == np.float32
        assert 0.0 <= d.min() and d.max() <= 1.0
    layers = random_disparity(64, 80, np.random.default_rng(3), "layers", (3, 3))
    assert len(np.unique(layers)) <= 4


def test_noise_and_jpeg_options():
    img = _texture()
    s = synthesize(img, 1, SynthConfig(noise_prob=1.0, jpeg_prob=1.0, max_coc=(0.0, 0.0)))
    assert {"photons", "read_noise", "jpeg_quality"} <= set(s.params)
    assert s.blurred.dtype == np.float32 and 0.0 <= s.blurred.min() and s.blurred.max() <= 1.0
    assert np.abs(s.blurred - img).mean() > 1e-3  # noise/JPEG changed it even without blur
    with pytest.raises(ValueError):
        SynthConfig(depth="nope")


def test_a_256_pair_takes_well_under_a_second():
    import torch

    img = _texture(256, 256)
    cfg = SynthConfig(max_coc=(16.0, 16.0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        synthesize(img, 0, cfg)
        times = []
        for seed in range(3):
            t = time.perf_counter()
            synthesize(img, seed, cfg)
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    assert min(times) < 1.0
