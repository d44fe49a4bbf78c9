"""The defocus synthesiser: determinism, identity at the focal plane, blur growing with depth,
no leakage across occlusion edges, disk PSF, options."""

from __future__ import annotations

import json
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------- v2

from cmddcli.data.synth import (  # noqa: E402
    PSF_KINDS,
    SYNTH_PRESETS,
    PSFShape,
    psf_kernel,
    psf_kernels_rgb,
    random_disparity as _random_disparity,
    sample_psf_shape,
    synth_preset,
)


def _photo(size=160) -> np.ndarray:
    """A natural photograph with clear object edges (scikit-image's astronaut), float32 sRGB."""
    from skimage import data

    return (data.astronaut()[40:40 + size, 120:120 + size] / 255.0).astype(np.float32)


def _grad_energy(img: np.ndarray) -> float:
    g = img.mean(axis=2)
    return float((np.diff(g, axis=0) ** 2).mean() + (np.diff(g, axis=1) ** 2).mean())


@pytest.mark.parametrize("kind", PSF_KINDS)
def test_every_psf_shape_is_normalised_and_non_negative(kind):
    rng = np.random.default_rng(0)
    for radius in (0.3, 0.7, 2.5, 9.0, 20.0):
        shape = PSFShape(kind=kind, rim=float(rng.uniform(0.3, 0.9)), edge=0.1, blades=6,
                         catseye=0.5, cat_angle=0.7, chroma=0.05)
        for k in (psf_kernel(radius, shape, 4), psf_kernels_rgb(radius, shape, 4)):
            assert k.dtype == np.float32 and k.min() >= 0
            sums = k.reshape(-1, k.shape[-2] * k.shape[-1]).sum(axis=1)
            np.testing.assert_allclose(sums, 1.0, atol=1e-5)
            assert k.shape[-1] % 2 == 1 and k.shape[-1] >= 2 * radius - 1
    assert psf_kernel(0.3, PSFShape(kind)).shape == (1, 1)


def test_psf_shapes_differ_as_described():
    r = 8.0
    disk, rim = psf_kernel(r, PSFShape("disk")), psf_kernel(r, PSFShape("rim", rim=1.5))
    apod = psf_kernel(r, PSFShape("apodized", rim=0.8))
    c = disk.shape[0] // 2
    assert rim[c, c + 7] > 1.5 * rim[c, c]  # bright rim
    assert apod[c, c + 7] < 0.5 * apod[c, c]  # soft rim
    assert np.ptp(disk[c, c - 6:c + 7]) < 1e-7  # flat disk
    cat = psf_kernel(r, PSFShape("disk", catseye=0.8, cat_angle=0.0))  # squeezed along x
    assert (cat[c, :] > 0).sum() < (cat[:, c] > 0).sum()
    ys, xs = np.mgrid[:cat.shape[0], :cat.shape[1]] - c
    assert abs((cat * xs).sum()) < 1e-4 and abs((cat * ys).sum()) < 1e-4  # stays centred
    rgb = psf_kernels_rgb(r, PSFShape("disk", chroma=0.1))
    assert (rgb[0] > 0).sum() < (rgb[1] > 0).sum() < (rgb[2] > 0).sum()


def test_zero_residual_gives_the_sharp_input_as_target():
    img = _photo(128)
    s = synthesize(img, 3, synth_preset("v2", noise_prob=0.0, jpeg_prob=0.0))
    assert s.target is s.sharp and np.array_equal(s.target, img)
    m = synth_preset("v2").margin
    big = _photo(128 + 2 * m)
    s = synthesize(big, 3, synth_preset("v2"), margin=m)
    assert s.blurred.shape == s.target.shape == (128, 128, 3) and s.disparity.shape == (128, 128)
    np.testing.assert_array_equal(s.target, big[m:-m, m:-m])


def test_dpdd_residual_target_lies_between_source_and_input():
    img = _photo(160)
    disp = np.zeros((160, 160), np.float32)  # every pixel far from the focal plane: 12 px input blur
    cfg = synth_preset("v2_dpdd", noise_prob=0.0, jpeg_prob=0.0)
    assert cfg.target_residual == pytest.approx(4 / 22) and cfg.diffraction == pytest.approx(1.4)
    s = synthesize(img, 0, cfg, disparity=disp, focus=1.0, max_coc=12.0, psf=PSFShape("disk"))
    e_sharp, e_target, e_input = (_grad_energy(a[16:-16, 16:-16]) for a in (s.sharp, s.target, s.blurred))
    assert e_input < e_target < e_sharp
    assert e_target < 0.9 * e_sharp and e_target > 3 * e_input
    # diffraction alone (no residual CoC) blurs a little
    d = synthesize(img, 0, synth_preset("v2", diffraction=1.4), disparity=disp, focus=0.0, max_coc=12.0)
    assert 0.5 * e_sharp < _grad_energy(d.target[16:-16, 16:-16]) < e_sharp


def _edge_alignment(disp: np.ndarray, grad: np.ndarray) -> float:
    """Mean image gradient on depth edges (jumps between layers, not the slope of a tilted plane) over
    the mean gradient everywhere."""
    edge = np.zeros(disp.shape, bool)
    edge[:, 1:] |= np.abs(np.diff(disp, axis=1)) > 0.02
    edge[1:, :] |= np.abs(np.diff(disp, axis=0)) > 0.02
    return float(grad[edge].mean() / grad.mean()) if edge.any() else float("nan")


def test_segment_depth_edges_follow_image_edges():
    img = _photo(160)
    g = img.mean(axis=2)
    gy, gx = np.gradient(g)
    grad = np.hypot(gx, gy)
    seg, rnd = [], []
    for seed in range(8):
        a = _random_disparity(160, 160, np.random.default_rng(seed), "segments", (2, 4), image=img)
        b = _random_disparity(160, 160, np.random.default_rng(seed), "layers", (2, 4))
        seg.append(_edge_alignment(a, grad))
        rnd.append(_edge_alignment(b, grad))
    seg, rnd = np.nanmean(seg), np.nanmean(rnd)
    assert seg > 1.6 * rnd and seg > 1.6  # depth edges sit on image edges; random shapes do not
    with pytest.raises(ValueError):
        _random_disparity(16, 16, np.random.default_rng(0), "segments")


@pytest.mark.parametrize("name", list(SYNTH_PRESETS))
def test_every_preset_same_seed_same_bytes(name):
    cfg = synth_preset(name, noise_prob=1.0, jpeg_prob=1.0)
    m = cfg.margin
    img = _photo(64 + 2 * m)
    a, b, c = (synthesize(img, seed, cfg, margin=m) for seed in (5, 5, 6))
    for field in ("blurred", "target", "disparity", "coc"):
        assert getattr(a, field).tobytes() == getattr(b, field).tobytes()
    assert a.params == b.params and a.blurred.tobytes() != c.blurred.tobytes()
    assert a.blurred.shape == (64, 64, 3) and 0 <= a.blurred.min() and a.blurred.max() <= 1


def test_v1_preset_is_the_legacy_path():
    assert synth_preset("v1").legacy and synth_preset("v1").margin == 0
    assert not synth_preset("v2").legacy
    img = _texture(64, 64)
    a = synthesize(img, 2, SynthConfig(max_coc=(1.0, 16.0)))
    b = synthesize(img, 2, synth_preset("v1"))
    assert a.blurred.tobytes() == b.blurred.tobytes()


def test_v1_noisy_is_v1_plus_v2_noise():
    """v1_noisy changes only the noise and JPEG fields of v1; with them off it gives v1's bytes, with
    noise forced on the blurred image differs from v1's and the target does not."""
    import dataclasses

    v1, noisy, v2 = synth_preset("v1"), synth_preset("v1_noisy"), synth_preset("v2")
    fields = ("noise_prob", "photons", "read_noise", "jpeg_prob", "jpeg_quality")
    assert all(getattr(noisy, f) == getattr(v2, f) for f in fields) and noisy.noise_prob > 0
    assert dataclasses.replace(noisy, **{f: getattr(v1, f) for f in fields}) == v1
    img = _texture(64, 64)
    quiet = synthesize(img, 3, synth_preset("v1_noisy", noise_prob=0.0, jpeg_prob=0.0))
    loud = synthesize(img, 3, synth_preset("v1_noisy", noise_prob=1.0))
    ref = synthesize(img, 3, v1)
    assert quiet.blurred.tobytes() == ref.blurred.tobytes()
    assert loud.blurred.tobytes() != ref.blurred.tobytes() and loud.target.tobytes() == ref.target.tobytes()


def test_v1_jpeg_is_v1_noisy_with_more_jpeg():
    """v1_jpeg differs from v1_noisy only in how often and how hard the blurred image is JPEG-compressed;
    a forced round trip at its lowest quality changes the blurred image, not the target."""
    import dataclasses

    noisy, jp = synth_preset("v1_noisy"), synth_preset("v1_jpeg")
    assert jp.jpeg_prob > noisy.jpeg_prob and jp.jpeg_quality[0] < noisy.jpeg_quality[0]
    assert dataclasses.replace(jp, jpeg_prob=noisy.jpeg_prob, jpeg_quality=noisy.jpeg_quality) == noisy
    img = _texture(64, 64)
    plain = synthesize(img, 3, synth_preset("v1_jpeg", noise_prob=0.0, jpeg_prob=0.0))
    jpeg = synthesize(img, 3, synth_preset("v1_jpeg", noise_prob=0.0, jpeg_prob=1.0, jpeg_quality=(50, 50)))
    assert jpeg.blurred.tobytes() != plain.blurred.tobytes() and jpeg.target.tobytes() == plain.target.tobytes()
    assert jpeg.params["jpeg_quality"] == 50


def test_v1_jpeg_wide_is_v1_jpeg_with_larger_blur():
    """v1_jpeg_wide changes only the range of the largest CoC radius, and the v1 (legacy) render path
    stays in use; the training crop (256²) keeps the whole 24 px range."""
    import dataclasses

    from cmddcli.train.data import synth_config_for

    jp, wide = synth_preset("v1_jpeg"), synth_preset("v1_jpeg_wide")
    assert wide.max_coc == (2.0, 24.0) and dataclasses.replace(wide, max_coc=jp.max_coc) == jp
    assert wide.legacy and synth_config_for(256, "v1_jpeg_wide").max_coc == (2.0, 24.0)
    img = _texture(96, 96)
    small = synthesize(img, 5, synth_preset("v1_jpeg", noise_prob=0.0, jpeg_prob=0.0), max_coc=16.0)
    large = synthesize(img, 5, synth_preset("v1_jpeg_wide", noise_prob=0.0, jpeg_prob=0.0), max_coc=24.0)
    assert large.coc.max() == pytest.approx(24.0, abs=0.5) and small.coc.max() <= 16.0 + 0.5


def test_heldout_psf_family_differs_from_v2():
    """v2's shapes are all point-symmetric with a bright or flat centre; the held-out ones are odd-sided
    polygons (not point-symmetric) or rings (dark centre)."""
    v2, held = synth_preset("v2"), synth_preset("heldout")
    assert not {k for k, _ in v2.psf_family} & {k for k, _ in held.psf_family}
    rng = np.random.default_rng(0)

    def asymmetry(k):
        return float(np.abs(k - k[::-1, ::-1]).sum())

    def centre_ratio(k):
        c = k.shape[0] // 2
        return float(k[c, c] / k.max())

    for _ in range(60):
        k = psf_kernel(10.0, sample_psf_shape(rng, v2))
        assert asymmetry(k) < 1e-5 and centre_ratio(k) > 0.3
    kinds = set()
    for _ in range(30):
        shape = sample_psf_shape(rng, held)
        k = psf_kernel(10.0, shape)
        kinds.add(shape.kind)
        assert asymmetry(k) > 0.005 or centre_ratio(k) < 0.1
    assert kinds == {"polygon", "ring"}


def test_heavy_tailed_blur_sizes():
    cfg = synth_preset("v2")
    from cmddcli.data.synth import _sample_max_coc

    rng = np.random.default_rng(0)
    r = np.array([_sample_max_coc(rng, cfg) for _ in range(4000)])
    assert r.min() >= cfg.max_coc[0] and r.max() <= cfg.max_coc[1]
    assert 4.5 < np.median(r) < 7.5 and (r > 12).mean() > 0.05 and (r > 16).mean() > 0.01


def test_palette_roundtrip_limits_colours_and_stays_close():
    """A palette round trip leaves at most ``colors`` distinct colours, stays near the input (a smooth
    texture with 64 colours: PSNR > 25 dB), and dithering changes how pixels are mapped."""
    from cmddcli.data.synth import palette_roundtrip

    y, x = np.mgrid[0:64, 0:64] / 64.0
    img = np.stack([0.5 + 0.4 * np.sin(6 * x + c) * np.cos(4 * y - c) for c in (0.0, 1.0, 2.0)], -1).astype(np.float32)
    for dither in (False, True):
        out = palette_roundtrip(img, 64, dither)
        assert out.dtype == np.float32 and out.shape == img.shape
        assert len(np.unique(out.reshape(-1, 3), axis=0)) <= 64
        assert 10 * np.log10(1.0 / np.mean((out - img) ** 2)) > 25
    assert palette_roundtrip(img, 16, True).tobytes() != palette_roundtrip(img, 16, False).tobytes()
    with pytest.raises(ValueError, match="palette_colors"):
        SynthConfig(palette_colors=(1, 300))


def test_v1_jpeg_gif_is_v1_jpeg_with_palette():
    """v1_jpeg_gif changes only the palette fields of v1_jpeg; with the palette off it gives v1_jpeg's
    bytes; with it on, the blurred image has at most the drawn number of colours and the target is the
    same."""
    import dataclasses

    jp, gif = synth_preset("v1_jpeg"), synth_preset("v1_jpeg_gif")
    assert gif.palette_prob > 0 and dataclasses.replace(gif, palette_prob=0.0) == jp
    img = _texture(96, 96)
    quiet = dict(noise_prob=0.0, jpeg_prob=0.0)
    plain = synthesize(img, 3, synth_preset("v1_jpeg", **quiet))
    off = synthesize(img, 3, synth_preset("v1_jpeg_gif", palette_prob=0.0, **quiet))
    on = synthesize(img, 3, synth_preset("v1_jpeg_gif", palette_prob=1.0, **quiet))
    assert off.blurred.tobytes() == plain.blurred.tobytes()
    assert on.sharp.tobytes() == plain.sharp.tobytes() and on.blurred.tobytes() != plain.blurred.tobytes()
    n = on.params["palette_colors"]
    assert 32 <= n <= 256 and isinstance(on.params["palette_dither"], bool)
    assert len(np.unique(on.blurred.reshape(-1, 3), axis=0)) <= n
    # with noise and JPEG on, the palette step comes last and draws nothing before them: same choices
    loud = dict(noise_prob=1.0, jpeg_prob=1.0)
    ref = synthesize(img, 4, synth_preset("v1_jpeg", **loud))
    pal = synthesize(img, 4, synth_preset("v1_jpeg_gif", palette_prob=1.0, **loud))
    assert {k: v for k, v in pal.params.items() if not k.startswith("palette_")} == ref.params


def test_palette_roundtrip_refuses_other_arrays():
    from cmddcli.data.synth import palette_roundtrip

    for bad in (np.zeros((8, 8), np.float32), np.zeros((8, 8, 4), np.float32), np.zeros((8, 8, 3), np.uint16)):
        with pytest.raises(ValueError, match="float \\(H, W, 3\\)"):
            palette_roundtrip(bad, 16, False)
    with pytest.raises(ValueError, match="2..256"):
        palette_roundtrip(np.zeros((8, 8, 3), np.float32), 300, False)


# Golden values of the presets' output on a fixed texture and seed: a change to the renderer, the PSFs
# or the depth maps shows here. Stored as 4 x 4 block means and the standard deviation of every array
# (blurred image, CoC / 32 px, disparity) for seeds 0-2, in tests/golden_synth.json, compared within
# 1e-4: exact hashes of the 16-bit arrays (the test's first form) differed between machines and
# library builds with the same code (session 21: numpy 2.4.6, scipy 1.17.1, scikit-image 0.26.0 on an
# AVX-512 CPU). Regenerate after an intended change with `python tests/test_data_synth.py
# --write-golden` and say why in the commit.
GOLDEN_FILE = Path(__file__).with_name("golden_synth.json")
GOLDEN_PRESETS = ("v1", "v2")


def _golden_values(name: str) -> list:
    from cmddcli.data.synth import synth_preset

    img = _texture(80, 72, seed=3)
    out = []
    for seed in (0, 1, 2):
        s = synthesize(img, seed, synth_preset(name, noise_prob=0.0, jpeg_prob=0.0))
        for a in (s.blurred, np.clip(s.coc / 32.0, 0, 1), s.disparity):
            a = np.asarray(a, dtype=np.float64)
            a = a.reshape(a.shape[0], a.shape[1], -1)
            h, w = a.shape[0] // 4 * 4, a.shape[1] // 4 * 4
            blocks = a[:h, :w].reshape(4, h // 4, 4, w // 4, -1).mean(axis=(1, 3, 4))  # (4, 4)
            out.append([round(float(v), 7) for v in blocks.ravel()] + [round(float(a.std()), 7)])
    return out


@pytest.mark.parametrize("name", GOLDEN_PRESETS)
def test_preset_output_matches_its_golden_values(name):
    golden = json.loads(GOLDEN_FILE.read_text())[name]
    np.testing.assert_allclose(np.array(_golden_values(name)), np.array(golden), rtol=0, atol=1e-4)


if __name__ == "__main__":  # python tests/test_data_synth.py --write-golden
    import sys

    if sys.argv[1:] != ["--write-golden"]:
        sys.exit("usage: python tests/test_data_synth.py --write-golden")
    GOLDEN_FILE.write_text(json.dumps({n: _golden_values(n) for n in GOLDEN_PRESETS}, indent=1) + "\n")
    print(f"wrote {GOLDEN_FILE}")
