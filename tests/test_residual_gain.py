"""Residual gain (cmddcli.model.residual_gain, scripts/residual_gain.py): x + g * r(x), exactly."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _nets import random_net
from cmddcli.errors import CmddError
from cmddcli.eval.metrics import psnr, psnr_cf
from cmddcli.model.residual_gain import gain_curve, scale_residual
from cmddcli.model.weights import load_weights, read_metadata, save_weights

ROOT = Path(__file__).resolve().parents[1]


def test_scaled_network_restores_x_plus_g_times_its_residual():
    """For a random network (not the identity) and g in {0.5, 1.3}: the scaled network's output equals
    x + g * (net(x) - x) within 5e-5 (fp32 rounding of outputs of size ~1-10: 1.9e-5 measured), in eval
    and training mode; bad gains are refused."""
    x = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    for training in (False, True):
        net = random_net("tiny", seed=3).train(training)
        with torch.no_grad():
            ref = net(x)
        assert (ref - x).abs().max() > 1e-3
        for g in (0.5, 1.3):
            scaled = scale_residual(random_net("tiny", seed=3).train(training), g)
            with torch.no_grad():
                torch.testing.assert_close(scaled(x), x + g * (ref - x), atol=5e-5, rtol=0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(CmddError, match="residual gain"):
            scale_residual(random_net("tiny"), bad)


def test_gain_curve_scores_the_clipped_extrapolation():
    """gain_curve(x, y, t, gains) = the protocol's PSNR / colour-fair PSNR of clip(x + g (y - x)): at
    g = 1 the output's own scores, and a target that is exactly x + 1.5 (y - x) peaks at 1.5."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (24, 32, 3))
    y = x + rng.normal(0, 0.05, x.shape)
    t = np.clip(x + 1.5 * (y - x), 0, 1)
    curve = gain_curve(x, y, t, [1.0, 1.25, 1.5, 1.75])
    assert curve[1.0]["psnr"] == pytest.approx(psnr(np.clip(y, 0, 1), t))
    assert curve[1.0]["psnr_cf"] == pytest.approx(psnr_cf(np.clip(y, 0, 1), t))
    assert max(curve, key=lambda g: curve[g]["psnr"]) == 1.5
    with pytest.raises(CmddError, match="shapes differ"):
        gain_curve(x, y[:-1], t, [1.0])


def _script():
    spec = importlib.util.spec_from_file_location("residual_gain", ROOT / "scripts" / "residual_gain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_gains():
    parse = _script().parse_gains
    assert parse("1:1.4:0.2") == [1.0, 1.2, 1.4]
    assert parse("1.3,0.8") == [0.8, 1.0, 1.3]  # sorted, 1 always scored
    for bad in ("1:0.5:0.1", "1:2:0", "a,b", "0,1", "-1"):
        with pytest.raises(CmddError, match="--gains"):
            parse(bad)


def test_script_fits_on_the_first_set_and_writes_the_gain(tmp_path):
    """Two tiny pairs whose targets are x + 1.4 * (net(x) - x): the fitted gain is 1.4, the written
    weights restore x + 1.4 r (so cmdd's network reproduces the target), the card records the gain."""
    net = random_net("tiny", seed=5).eval()
    src = tmp_path / "w.safetensors"
    save_weights(net, src, metadata={"note": "test"}, dtype=torch.float32, preset="tiny")
    net, _ = load_weights(src)  # the weights as stored
    data = tmp_path / "pairs"
    rng = np.random.default_rng(1)
    for i in range(2):
        x = (rng.uniform(0.3, 0.7, (48, 64, 3)) * 255).round() / 255
        with torch.no_grad():
            y = net.float().eval()(torch.from_numpy(x).float().permute(2, 0, 1)[None])[0].permute(1, 2, 0).double().numpy()
        t = np.clip(x + 1.4 * (y - x), 0, 1)
        for sub, img in (("blur", x), ("sharp", t)):
            (data / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 255).round().astype(np.uint8)).save(data / sub / f"p{i}.png")
    out = tmp_path / "g.safetensors"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "residual_gain.py"), str(src), "--data", str(data),
                        "--gains", "1:1.8:0.2", "--threads", "1", "--write", str(out), "--gain", "fit"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    card = read_metadata(out)["residual_gain"]
    assert card["gain"] == pytest.approx(1.4) and card["curves"][0]["images"] == 2
    scaled, _ = load_weights(out)
    torch.testing.assert_close(scaled.output.weight.float(), 1.4 * net.output.weight.float(), atol=1e-6, rtol=0)
    refused = subprocess.run([sys.executable, str(ROOT / "scripts" / "residual_gain.py"), str(src), "--data", str(data),
                              "--write", str(tmp_path / "h.safetensors")], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "--gain" in refused.stderr and refused.stderr.count("\n") == 1
