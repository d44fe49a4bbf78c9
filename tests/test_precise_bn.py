"""Precise BatchNorm (cmddcli.train.precise_bn, scripts/recalibrate_bn.py)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _nets import random_net
from cmddcli.errors import CmddError
from cmddcli.train.precise_bn import batchnorm_layers, recalibrate_batchnorm

ROOT = Path(__file__).resolve().parents[1]


def _batches(n, seed=0, shape=(2, 3, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=g) for _ in range(n)]


def test_running_statistics_are_the_average_of_the_batch_statistics():
    """After recalibration each BatchNorm's running mean / variance equal the plain average of the
    batch means / unbiased batch variances that layer saw (recorded with forward hooks, the
    reference), within 1e-5; parameters are unchanged, momenta restored, the model in eval mode."""
    net = random_net("tiny", seed=1)
    params = {k: v.clone() for k, v in net.named_parameters()}
    layers = batchnorm_layers(net)
    momenta = [m.momentum for m in layers]
    seen = {id(m): [] for m in layers}

    def record(m, inp, _out):
        x = inp[0].detach().double()
        seen[id(m)].append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)))

    hooks = [m.register_forward_hook(record) for m in layers]
    assert recalibrate_batchnorm(net, iter(_batches(6)), 5) == 5
    for h in hooks:
        h.remove()
    assert not net.training
    assert [m.momentum for m in layers] == momenta
    for k, v in net.named_parameters():
        assert torch.equal(v, params[k]), k
    for m in layers:
        stats = seen[id(m)]
        assert len(stats) == 5  # the sixth batch was not read
        mean = torch.stack([s[0] for s in stats]).mean(0)
        var = torch.stack([s[1] for s in stats]).mean(0)
        np.testing.assert_allclose(m.running_mean.double(), mean, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(m.running_var.double(), var, atol=1e-5, rtol=1e-5)


def test_recalibration_changes_outputs_only_through_batchnorm_and_is_order_free():
    """The same batches in another order give the same statistics (it is an average, not a moving
    one), so the same outputs; another set of batches gives other outputs."""
    a, b, c = (random_net("tiny", seed=2) for _ in range(3))
    data = _batches(4, seed=3)
    recalibrate_batchnorm(a, iter(data), 4)
    recalibrate_batchnorm(b, iter(data[::-1]), 4)
    recalibrate_batchnorm(c, iter(_batches(4, seed=9, shape=(2, 3, 32, 32))), 4)
    x = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=0)
        assert (a(x) - c(x)).abs().max() > 1e-4


def test_recalibration_errors():
    net = random_net("tiny")
    with pytest.raises(CmddError, match=">= 1"):
        recalibrate_batchnorm(net, iter(_batches(1)), 0)
    with pytest.raises(CmddError, match="needs 3 batches, the data gave 2"):
        recalibrate_batchnorm(net, iter(_batches(2)), 3)
    assert not net.training and [m.momentum for m in batchnorm_layers(net)] == [0.1] * len(batchnorm_layers(net))
    with pytest.raises(CmddError, match="no BatchNorm"):
        recalibrate_batchnorm(torch.nn.Conv2d(3, 3, 1), iter(_batches(1)), 1)


def test_recalibrate_script_on_procedural_synthesis(tmp_path):
    """The script on the tiny training preset's data (procedural synthesis, no files needed): only
    BatchNorm buffers change, the card records the recalibration."""
    from cmddcli.model.weights import load_weights, read_metadata, save_weights

    src = tmp_path / "src.safetensors"
    save_weights(random_net("tiny", seed=5), src, metadata={"note": "test"}, preset="tiny")
    out = tmp_path / "out.safetensors"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "recalibrate_bn.py"), str(src), str(out),
                        "--preset", "tiny", "--batches", "3"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    meta = read_metadata(out)
    assert meta["batchnorm_recalibrated"]["batches"] == 3 and meta["note"] == "test"
    a, _ = load_weights(src)
    b, _ = load_weights(out)
    sa, sb = a.state_dict(), b.state_dict()
    changed = {k for k in sa if not torch.equal(sa[k], sb[k])}
    assert changed and all("bn" in k and ("running" in k or "num_batches" in k) for k in changed), changed

    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "recalibrate_bn.py"), str(src), str(src),
                          "--preset", "tiny"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "source weights file" in bad.stderr
