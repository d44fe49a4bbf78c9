"""Depth and width growth (cmddcli.model.grow, scripts/grow_blocks.py): a deeper or wider network that
starts as the trained one."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _nets import random_net
from cmddcli.errors import CmddError
from cmddcli.model import model_config
from cmddcli.model.grow import grow_blocks, widen
from cmddcli.model.weights import load_weights, read_metadata

ROOT = Path(__file__).resolve().parents[1]
DEEPER = (2, 3, 1, 2, 2, 1, 3, 2)  # tiny is one block per stage: new blocks in most stages, none in some


def _trained_like(seed: int = 0):
    """A tiny network whose BatchNorm statistics, skip scales and norms are not at their defaults,
    so a growth that dropped or misplaced any of them would show in the output."""
    net = random_net("tiny", seed=seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name or "skip_scale" in name or "bn" in name:
                p.add_(0.2 * torch.randn_like(p))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("training", [False, True])
def test_grown_network_computes_the_same_function(training):
    """Eval mode (running BatchNorm statistics) and training mode (batch statistics): the grown
    network's output equals the source's within 2e-5 (fp32) on a random batch: the same operations on
    the same numbers, but oneDNN's rounding can differ with the tensors' memory alignment (measured up
    to 7e-6 here, 0 in most runs)."""
    src = _trained_like().train(training)
    grown = grow_blocks(src, DEEPER)
    assert grown.training == training
    assert grown.config == model_config("tiny", blocks=DEEPER)
    x = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = src(x), grown(x)
    assert (ref - x).abs().max() > 1e-3  # the source is not the identity, so equality means something
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)


def test_grown_blocks_are_new_and_trainable():
    """The trained blocks are copied (same tensors at the same indices); the new ones are not dead:
    one backward pass reaches their LayerNorm weight, and after a few SGD steps their conv and
    Mamba branches carry gradient and the network differs from the source."""
    src = _trained_like(seed=2)
    grown = grow_blocks(src, DEEPER).train()
    for k, v in src.state_dict().items():
        torch.testing.assert_close(grown.state_dict()[k], v, atol=0, rtol=0)
    new = grown.encoders[0][1]  # a new block
    assert new.norm.weight.abs().max() == 0 and new.mixer.out_proj.weight.abs().max() == 0
    opt = torch.optim.SGD(grown.parameters(), lr=0.05)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    target = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    for step in range(3):
        opt.zero_grad()
        (grown(x) - target).abs().mean().backward()
        if step == 0:
            assert new.norm.weight.grad.abs().max() > 0
        opt.step()
    assert new.cnn.conv1.weight.grad.abs().max() > 0
    assert new.mixer.out_proj.weight.grad.abs().max() > 0
    with torch.no_grad():
        assert (grown.eval()(x) - src.eval()(x)).abs().max() > 1e-4


def test_near_identity_growth_engages_both_gates_from_the_first_step():
    """norm_weight > 0: the new blocks' LayerNorm weight starts there (trained blocks still copied
    exactly), the output moves off the source's by an amount that grows with norm_weight, and
    the first backward pass already reaches the second gate of each branch (ConvBranch gamma, Mamba
    out_proj). With norm_weight = 0 the ConvBranch's gamma gets no gradient (its input is zero) and
    out_proj only a position-independent one (its input is the constant the branch makes of zero)."""
    src = _trained_like(seed=4).eval()
    x = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(6))
    diffs = []
    for w in (0.0, 0.03, 0.1):
        torch.manual_seed(0)
        grown = grow_blocks(src, DEEPER, norm_weight=w)
        new = grown.encoders[0][1]
        assert torch.all(new.norm.weight == w) and new.norm.bias.abs().max() == 0
        for k, v in src.state_dict().items():
            torch.testing.assert_close(grown.state_dict()[k], v, atol=0, rtol=0)
        with torch.no_grad():
            diffs.append(float((grown(x) - src(x)).abs().max()))
        grown.train().zero_grad()
        grown(x).abs().mean().backward()
        gamma, out_proj = new.cnn.bn2.weight.grad.abs().max(), new.mixer.out_proj.weight.grad.abs().max()
        if w == 0:
            assert gamma == 0
        else:
            assert gamma > 0 and out_proj > 0
    assert diffs[0] <= 2e-5 < diffs[1] < diffs[2], diffs
    with pytest.raises(CmddError, match="norm_weight"):
        grow_blocks(src, DEEPER, norm_weight=-0.1)


def test_growth_rejects_fewer_blocks_and_bad_counts():
    src = random_net("tiny")
    with pytest.raises(CmddError, match="cannot remove blocks"):
        grow_blocks(src, (1, 1, 1, 0, 1, 1, 1, 1))
    with pytest.raises(CmddError, match="8 integer counts"):
        grow_blocks(src, (2, 2, 2))


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("factor", [2, 3])
def test_widened_network_computes_the_same_function(training, factor):
    """Width growth (Net2WiderNet): every channel copied ``factor`` times, summed weights split. Eval and
    training mode, the output equals the source's within 1e-5 of the output's largest value (fp32
    rounding: the split sums run in another order; measured up to 4e-6 of it) on a random batch.
    tiny's dt rank grows with the width at factor 3 (ceil(24/16) = 2 > 1), which the new zero rows of
    x_proj must absorb."""
    src = _trained_like(seed=3).train(training)
    wide = widen(src, factor, seed=4)
    assert wide.training == training
    assert wide.config == model_config("tiny", width=8 * factor)
    x = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = src(x), wide(x)
    assert (ref - x).abs().max() > 1e-3
    torch.testing.assert_close(out, ref, atol=1e-5 * float(ref.abs().max()), rtol=0)


def test_widened_copies_separate_under_training():
    """The split shares differ per element, so the copies of a channel get different gradients: after
    a few SGD steps the two halves of a widened conv's output channels are no longer equal (plain
    copies with equal halves would stay equal forever). Bad factors and window attention are refused."""
    src = _trained_like(seed=5)
    wide = widen(src, 2, seed=6).train()
    w0 = wide.encoders[0][0].cnn.conv1.weight
    c = w0.shape[0] // 2
    torch.testing.assert_close(w0[:c], w0[c:], atol=0, rtol=0)  # output channels start as exact copies
    opt = torch.optim.SGD(wide.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        x = torch.rand(2, 3, 32, 32, generator=g)
        loss = (wide(x) - x.flip(-1)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w1 = wide.encoders[0][0].cnn.conv1.weight.detach()
    assert (w1[:c] - w1[c:]).abs().max() > 1e-6
    for bad in (1, 0, 2.0, True):
        with pytest.raises(CmddError, match="integer >= 2"):
            widen(src, bad)
    with pytest.raises(CmddError, match="SS2D mixers only"):
        widen(random_net("tiny", mixer="window_attention"), 2)


def _grow_script(*args: str) -> subprocess.CompletedProcess:
    """Run scripts/grow_blocks.py with ``args``; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "grow_blocks.py"), *args],
                          capture_output=True, text=True, timeout=300)


def _assert_same_output_as_default(net) -> None:
    """``net`` restores a seeded random image as the shipped default weights do, within 1e-5 (fp32)."""
    default, _ = load_weights(None)
    x = torch.rand(1, 3, 48, 56, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), default.float().eval()(x), atol=1e-5, rtol=0)


def test_grow_script_writes_the_deeper_preset_with_its_lineage(tmp_path):
    """The default weights (small-n4) grown to cpu-deep: written, loadable as cpu-deep, same output as
    the default, card records the source; weights of another state count are refused with exit 1."""
    out = tmp_path / "deep.safetensors"
    r = _grow_script("default", str(out), "--preset", "cpu-deep")
    assert r.returncode == 0, r.stderr
    meta = read_metadata(out)
    assert meta["preset"] == "cpu-deep"
    grown_card = meta["grown"]
    assert grown_card["blocks"] == {"from": [1, 1, 1, 2, 1, 1, 1, 1], "to": [2, 2, 2, 2, 2, 2, 2, 1]}
    assert grown_card["max_output_difference"] <= 1e-5
    deep, _ = load_weights(out)
    default, _ = load_weights(None)
    for k, v in default.state_dict().items():  # every trained tensor (BatchNorm statistics too) as shipped
        torch.testing.assert_close(deep.state_dict()[k], v.to(deep.state_dict()[k].dtype), atol=0, rtol=0)
    _assert_same_output_as_default(deep)
    json.dumps(meta)  # the card stays JSON

    near = tmp_path / "near.safetensors"  # near-identity: written although it differs (not held to --max-diff)
    r = _grow_script("default", str(near), "--preset", "cpu-deep", "--norm-weight", "0.1")
    assert r.returncode == 0, r.stderr
    near_card = read_metadata(near)["grown"]
    assert near_card["norm_weight"] == 0.1 and near_card["max_output_difference"] > 1e-5
    assert "near the identity" in near_card["method"]

    refused = _grow_script("v2", str(tmp_path / "x.safetensors"), "--preset", "cpu-deep")
    assert refused.returncode == 1
    assert "d_state" in refused.stderr and refused.stderr.count("\n") == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_grow_script_writes_the_wider_preset(tmp_path):
    """The default weights (small-n4, width 16) widened to cpu-w32: written, loadable as cpu-w32, same
    output as the default, the card records both widths; a width that is not a multiple (cpu-wide, 24),
    a preset that changes more than width (w24) and --norm-weight with a width growth are refused with
    one line and exit 1."""
    out = tmp_path / "w32.safetensors"
    r = _grow_script("default", str(out), "--preset", "cpu-w32")
    assert r.returncode == 0, r.stderr
    meta = read_metadata(out)
    assert meta["preset"] == "cpu-w32"
    assert meta["grown"]["width"] == {"from": 16, "to": 32}
    assert meta["grown"]["max_output_difference"] <= 1e-5 and "Net2WiderNet" in meta["grown"]["method"]
    _assert_same_output_as_default(load_weights(out)[0])
    for preset, why, extra in (("cpu-wide", "not an integer multiple", []), ("w24", "more than block counts", []),
                               ("cpu-w32", "adds none", ["--norm-weight", "0.1"])):
        bad = tmp_path / f"{preset}.safetensors"
        r = _grow_script("default", str(bad), "--preset", preset, *extra)
        assert r.returncode == 1 and why in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not bad.exists()


def test_grown_blocks_get_their_own_learning_rate_group():
    """optim.grown_from / grown_lr_mult: the new blocks' parameters (exactly those) form a second
    optimizer group with lr_mult; without grown_from there is one group; bad settings are refused."""
    from cmddcli.train.config import OptimConfig, TrainConfig
    from cmddcli.train.loop import param_groups

    grown = grow_blocks(random_net("tiny"), DEEPER)
    o = OptimConfig(grown_from=[1] * 8, grown_lr_mult=20.0)
    old, new = param_groups(grown, o)
    assert (old["lr_mult"], new["lr_mult"]) == (1.0, 20.0)
    fresh = {id(p) for name, p in grown.named_parameters()
             if any(name.startswith(f"{stage}.{i}.") for stage, n in
                    zip(["encoders.0", "encoders.1", "encoders.2", "latent", "decoders.0", "decoders.1",
                         "decoders.2", "refinement"], DEEPER) for i in range(1, n))}
    assert {id(p) for p in new["params"]} == fresh and fresh
    assert len(old["params"]) + len(new["params"]) == len(list(grown.parameters()))
    assert len(param_groups(grown, OptimConfig())) == 1
    with pytest.raises(CmddError, match="more blocks than the model"):
        param_groups(random_net("tiny"), OptimConfig(grown_from=[2] * 8, grown_lr_mult=20.0))
    for bad in ({"grown_from": [1, 1]}, {"grown_lr_mult": 0.0}):
        cfg = TrainConfig()
        for k, v in bad.items():
            setattr(cfg.optim, k, v)
        with pytest.raises(CmddError, match="grown"):
            cfg.validate()
