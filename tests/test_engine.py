"""Engine tests with small stand-in networks: tiling maths, exactness, odd sizes, OOM, precision."""

import logging

import numpy as np
import pytest
import torch
import torch.nn as nn

from cmddcli.engine import Deblurrer, axis_windows, is_oom, plan_axis, plan_tiles
from cmddcli.engine.tiling import default_margin, hann_ramp
from cmddcli.errors import CmddError, WeightsError


def conv_net(seed=0, layers=3):
    """Conv stack with a bounded receptive field: radius = number of 3x3 layers."""
    torch.manual_seed(seed)
    mods = []
    c = 3
    for i in range(layers):
        out = 3 if i == layers - 1 else 8
        mods += [nn.Conv2d(c, out, 3, padding=1)]
        if i < layers - 1:
            mods += [nn.ReLU()]
        c = out
    return nn.Sequential(*mods)


def engine(model, **kw):
    kw.setdefault("threads", 1)
    kw.setdefault("device", "cpu")
    return Deblurrer(model=model, **kw)


def rand_image(h, w, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


# ------------------------------------------------------------------------------------ tiling maths


@pytest.mark.parametrize("length,tile,overlap,align", [
    (100, 40, 8, 1), (161, 100, 40, 1), (1000, 256, 32, 16), (4001, 256, 64, 8), (3, 256, 64, 8),
    (300, 256, 64, 8), (257, 256, 64, 8), (97, 33, 12, 1), (64, 32, 0, 1),
])
def test_plan_axis_covers_with_overlap_and_alignment(length, tile, overlap, align):
    spans = plan_axis(length, tile, overlap, align)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        assert b0 > a0 and a1 - b0 >= overlap  # ordered, overlapping enough
        assert b0 % align == 0
    for a, b in spans[:-1]:
        assert b - a == min(tile, length)
    assert spans[-1][1] - spans[-1][0] < max(tile, 1) + align  # last tile at most align-1 longer


@pytest.mark.parametrize("length,tile,overlap,align", [(100, 40, 8, 1), (161, 100, 40, 1), (1000, 256, 64, 8)])
def test_windows_are_a_partition_of_unity_with_zero_margins(length, tile, overlap, align):
    spans = plan_axis(length, tile, overlap, align)
    margin = default_margin(overlap)
    ws = axis_windows(spans, margin)
    total = np.zeros(length)
    for (a, b), w in zip(spans, ws):
        total[a:b] += w
        assert w.min() >= 0 and w.max() <= 1
    assert total.min() > 0.99 and total.max() < 1.01  # ~1 everywhere (normalised anyway)
    # inner edges: the first/last `margin` pixels carry no weight; image edges full weight
    assert ws[0][0] == 1 and ws[-1][-1] == 1
    if margin:
        assert np.all(ws[0][-margin:] == 0) and np.all(ws[1][:margin] == 0)


def test_hann_ramps_complement():
    r = hann_ramp(7)
    assert np.all((r > 0) & (r < 1)) and np.all(np.diff(r) > 0)
    np.testing.assert_allclose(r + (1 - r), 1.0)
    np.testing.assert_allclose(r, 1 - r[::-1], atol=1e-12)  # symmetric cross-fade


def test_plan_tiles_grid():
    tiles = plan_tiles(100, 150, 64, 16, align=8)
    assert {(t.y0, t.x0) for t in tiles} >= {(0, 0)}
    assert all(t.weight().shape == t.shape for t in tiles)


# ------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("tile,overlap", [(64, 12), (40, 16), (33, 12), (48, 24)])
def test_tiled_equals_whole_for_bounded_receptive_field(tile, overlap):
    net = conv_net(layers=3)  # receptive-field radius 3 <= margin = 3 * overlap // 8
    img = rand_image(157, 203)
    whole = engine(net, tile=0).restore(img)
    tiled = engine(net, tile=tile, overlap=overlap).restore(img)
    assert np.abs(tiled - whole).max() <= 1e-6


def test_explicit_margin_and_progress():
    net = conv_net(layers=4)  # radius 4
    img = rand_image(90, 70)
    calls = []
    whole = engine(net, tile=0).restore(img)
    tiled = engine(net, tile=32, overlap=12, margin=4).restore(img, progress=lambda d, t: calls.append((d, t)))
    assert np.abs(tiled - whole).max() <= 1e-6
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1] > 1


def test_too_small_margin_is_not_exact():
    net = conv_net(layers=4)
    img = rand_image(90, 70)
    whole = engine(net, tile=0).restore(img)
    tiled = engine(net, tile=32, overlap=8).restore(img)  # margin 3 < radius 4
    assert np.abs(tiled - whole).max() > 1e-6


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (4001, 3), (3, 300)])
def test_odd_sizes(shape):
    net = conv_net(layers=2)
    img = rand_image(*shape)
    whole = engine(net, tile=0).restore(img)
    tiled = engine(net, tile=64, overlap=16).restore(img)
    assert whole.shape == img.shape and tiled.shape == img.shape
    assert np.abs(tiled - whole).max() <= 1e-6


def test_batched_tiles_match_single():
    net = conv_net()
    img = rand_image(130, 170)
    one = engine(net, tile=48, overlap=16, batch_tiles=1).restore(img)
    many = engine(net, tile=48, overlap=16, batch_tiles=5).restore(img)
    assert np.abs(one - many).max() <= 1e-6


def test_output_clamped_and_tensor_entry_point():
    class Wild(nn.Module):
        def forward(self, x):
            return x * 4 - 2

    eng = engine(Wild(), tile=16, overlap=4)
    x = torch.rand(2, 3, 20, 30)
    y = eng.restore_tensor(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1
    expected = (x * 4 - 2).clamp(0, 1)
    assert torch.allclose(y, expected, atol=1e-6)


def test_bad_input_shapes():
    eng = engine(conv_net())
    with pytest.raises(ValueError):
        eng.restore(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        eng.restore_tensor(torch.zeros(1, 4, 4, 4))


def test_cpu_plan_uses_pixel_budget():
    eng = engine(conv_net(), cpu_pixel_budget=100 * 100)
    assert eng.plan(90, 100)[0] >= 100  # fits: whole image
    tile, batch = eng.plan(300, 400)
    assert 75 <= tile <= 125 and batch == 1  # about sqrt(budget), fitted to the image
    assert engine(conv_net(), tile=0).plan(5000, 5000)[0] == 5000


def test_cpu_tile_fitted_to_image_wastes_less():
    from cmddcli.engine.tiling import plan_tiles

    eng = engine(conv_net(), cpu_pixel_budget=512 * 512, overlap=64)
    for h, w in [(1024, 1024), (3000, 4000), (2000, 3000), (4096, 4096)]:
        tile, _ = eng.plan(h, w)
        assert 384 <= tile <= 640
        seen = sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in plan_tiles(h, w, tile, 64, None, eng.align))
        fixed = sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in plan_tiles(h, w, 512, 64, None, eng.align))
        assert seen <= fixed
    tile, _ = eng.plan(1024, 1024)
    assert len(plan_tiles(1024, 1024, tile, 64, None, eng.align)) == 4  # 2 x 2, not 3 x 3 with 512-px tiles


def test_no_per_call_state():
    eng = engine(conv_net(), tile=32, overlap=8)
    before = dict(vars(eng))
    eng.restore(rand_image(50, 60))
    assert vars(eng).keys() == before.keys()
    assert all(vars(eng)[k] is before[k] for k in before if k != "_bytes_per_pixel")


# ------------------------------------------------------------------------------------ failures


class OOMAbove(nn.Module):
    """Raises an out-of-memory error when asked for more than `limit` pixels at once."""

    def __init__(self, limit, runtime_error=False):
        super().__init__()
        self.limit = limit
        self.runtime_error = runtime_error
        self.sizes = []
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        n = x.shape[0] * x.shape[-1] * x.shape[-2]
        self.sizes.append(tuple(x.shape))
        if n > self.limit:
            if self.runtime_error:
                raise RuntimeError("CUDA error: out of memory (fake)")
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate (fake)")
        return x * self.scale


@pytest.mark.parametrize("runtime_error", [False, True])
def test_oom_halves_tile_and_retries(caplog, runtime_error):
    net = OOMAbove(limit=70 * 70, runtime_error=runtime_error)
    img = rand_image(200, 260)
    with caplog.at_level(logging.WARNING, logger="cmddcli.engine.deblurrer"):
        out = engine(net, tile=0, overlap=8).restore(img)
    np.testing.assert_allclose(out, img, atol=1e-6)
    assert "out of memory" in caplog.text
    assert max(h * w for _, _, h, w in net.sizes[-3:]) <= 70 * 70  # finished with small tiles
    assert net.sizes[0] == (1, 3, 200, 260)  # started with the whole image


def test_oom_halves_batch_first():
    net = OOMAbove(limit=2 * 40 * 40)
    out = engine(net, tile=40, overlap=8, batch_tiles=8).restore(rand_image(100, 100))
    assert out.shape == (100, 100, 3)
    assert any(s[0] == 2 for s in net.sizes) and not any(s[0] == 8 for s in net.sizes[-3:])


def test_oom_gives_up_below_minimum_tile():
    with pytest.raises(CmddError, match="out of memory"):
        engine(OOMAbove(limit=10), tile=0).restore(rand_image(64, 64))


def test_other_errors_are_not_swallowed():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch somewhere")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        engine(Broken(), tile=16, overlap=4).restore(rand_image(40, 40))
    assert is_oom(RuntimeError("CUDA out of memory")) and not is_oom(RuntimeError("nope"))


class NaNUnderAutocast(nn.Module):
    """Finite in fp32, NaN in the tiles whose first pixel is > 0.5 when run under autocast."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        autocast = torch.is_autocast_enabled("cpu")
        self.calls.append((autocast, x.shape[0]))
        y = x.clone()
        if autocast:
            y[x[:, 0, 0, 0] > 0.5] = float("nan")
        return y


def test_non_finite_tile_falls_back_to_fp32(caplog):
    net = NaNUnderAutocast()
    img = rand_image(64, 64, seed=3)
    with caplog.at_level(logging.WARNING, logger="cmddcli.engine.deblurrer"):
        out = engine(net, precision="bf16", tile=24, overlap=8, batch_tiles=4).restore(img)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, img, atol=1e-6)
    assert "non-finite" in caplog.text
    assert any(not ac for ac, _ in net.calls)  # some tiles were redone in fp32
    fp32_tiles = sum(n for ac, n in net.calls if not ac)
    assert fp32_tiles < sum(n for ac, n in net.calls if ac)  # ... only the bad ones


def test_non_finite_in_fp32_is_an_error():
    class AlwaysNaN(nn.Module):
        def forward(self, x):
            return x * float("nan")

    with pytest.raises(CmddError, match="non-finite"):
        engine(AlwaysNaN(), tile=0).restore(rand_image(8, 8))


def test_settings_validation_and_missing_weights(tmp_path):
    with pytest.raises(CmddError):
        engine(conv_net(), precision="fp8")
    with pytest.raises(CmddError):
        engine(conv_net(), tile=-1)
    with pytest.raises(CmddError):
        engine(conv_net(), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(CmddError, match="CUDA"):
            engine(conv_net(), device="cuda")
    with pytest.raises(WeightsError, match="not found|no such"):
        Deblurrer(tmp_path / "nope.safetensors", device="cpu", threads=1)


def test_default_weights_missing_is_a_clear_error(monkeypatch, tmp_path):
    import cmddcli.model.weights as W

    monkeypatch.setattr(W, "default_weights_path", lambda: tmp_path / "absent.safetensors")
    with pytest.raises(WeightsError, match="--weights"):
        Deblurrer(device="cpu", threads=1)


def test_describe_is_json_able():
    import json

    d = engine(conv_net(), tile=128, overlap=32).describe()
    from cmddcli.engine.deblurrer import cpu_has_native_bf16

    assert json.loads(json.dumps(d))["tile"] == 128 and d["margin"] == 12
    assert d["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")  # CPU 'auto'


def test_cpu_auto_precision_follows_native_bf16(monkeypatch):
    from cmddcli.engine import deblurrer

    cpu = torch.device("cpu")
    monkeypatch.setattr(deblurrer, "cpu_has_native_bf16", lambda: True)
    assert deblurrer.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(deblurrer, "cpu_has_native_bf16", lambda: False)
    assert deblurrer.resolve_precision("auto", cpu) == "fp32"
    assert deblurrer.resolve_precision("fp32", cpu) == "fp32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_matches_cpu(precision):
    net = conv_net()
    img = rand_image(300, 200)
    ref = engine(net, tile=0).restore(img)
    out = Deblurrer(model=conv_net(), device="cuda", precision=precision, tile=128, overlap=32).restore(img)
    tol = 1e-5 if precision == "fp32" else 3e-2
    assert np.abs(out - ref).max() < tol


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_auto_plan():
    eng = Deblurrer(model=conv_net(), device="cuda")
    tile, batch = eng.plan(512, 512)
    assert tile >= 512 and batch >= 1


def test_tile_overlap_rule_is_shared_by_engine_and_cli():
    """One rule (engine.options.tile_overlap_problem): the engine and the CLI refuse the same values."""
    from cmddcli.cli.common import check_tile
    from cmddcli.engine.options import MIN_USER_TILE, tile_overlap_problem

    assert tile_overlap_problem(None, 32) is None and tile_overlap_problem(0, 500) is None
    assert tile_overlap_problem(128, 64) is None and tile_overlap_problem(48, 16) is None
    for tile, overlap, words in ((-1, 0, "tile must be >= 0"), (128, -1, "overlap must be >= 0"),
                                 (128, 65, "overlap must be at most half the tile")):
        assert words in tile_overlap_problem(tile, overlap)
        with pytest.raises(CmddError, match=words):
            Deblurrer(model=conv_net(), device="cpu", tile=tile, overlap=overlap)
        with pytest.raises(CmddError, match="--" + words):
            check_tile(tile, overlap)
    check_tile(MIN_USER_TILE, 0)
    with pytest.raises(CmddError, match=f"--tile must be 0 \\(whole image\\) or at least {MIN_USER_TILE}"):
        check_tile(MIN_USER_TILE - 1, 0)


def test_is_oom_knows_cpu_allocation_failures():
    """CPU out-of-memory comes as torch's allocator RuntimeError or MemoryError: the engine halves its
    tiles on it and `cmdd bench` reports it in one line (was a traceback for `bench --size 100000`)."""
    from cmddcli.engine.deblurrer import is_oom

    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:119] . DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 120000000000 bytes. Error code 12"))
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("out of memory"))
