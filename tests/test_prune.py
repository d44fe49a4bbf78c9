"""SSM state pruning (cmddcli.model.prune, scripts/prune_states.py) and the pruned default weights."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _nets import random_net
from cmddcli.errors import CmddError
from cmddcli.model.blocks import SS2D
from cmddcli.model.prune import prune_states, slowest_states

ROOT = Path(__file__).resolve().parents[1]


def _ss2d_layers(net):
    return {n: m for n, m in net.named_modules() if isinstance(m, SS2D)}


def _silence_states(net, drop: dict[str, list[int]], which: str) -> None:
    """Zero the B (or C) projection rows of the given states: those states then add nothing."""
    with torch.no_grad():
        for name, m in _ss2d_layers(net).items():
            R, N = m.R, m.N
            off = R if which == "B" else R + N
            for n in drop[name]:
                m.x_proj_weight[:, off + n] = 0


@pytest.mark.parametrize("which", ["B", "C"])
def test_pruning_silent_states_is_exact(which):
    """States whose B or C rows are zero contribute nothing: the pruned network computes the same
    output (fp32, within 1e-5 of scale), through the fast path and the reference path alike."""
    from cmddcli.model.blocks import reference_path

    net = random_net("tiny", seed=3, d_state=8).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a shuffled decay order, so "slowest" is not simply "first"
        for m in _ss2d_layers(net).values():
            m.A_logs.copy_(m.A_logs[:, torch.randperm(m.N, generator=g)] + 0.01 * torch.randn(m.A_logs.shape, generator=g))
    keep = {n: slowest_states(m, 3) for n, m in _ss2d_layers(net).items()}
    _silence_states(net, {n: [s for s in range(8) if s not in k] for n, k in keep.items()}, which)
    pruned, kept = prune_states(net, 3)
    assert kept == keep and pruned.config.d_state == 3
    x = torch.rand(1, 3, 40, 56, generator=g)
    with torch.no_grad():
        a, b = net(x), pruned(x)
        with reference_path():
            c = pruned(x)
    scale = a.abs().max().item()
    assert (a - b).abs().max().item() <= 1e-5 * scale
    assert (a - c).abs().max().item() <= 1e-5 * scale


def test_pruning_keeps_the_slowest_decays_and_changes_outputs_otherwise():
    """Kept states are those with the smallest mean |A|; dropping states that do contribute
    changes the output (so the exactness test above can fail)."""
    net = random_net("tiny", seed=1, d_state=4).eval()
    m = next(iter(_ss2d_layers(net).values()))
    with torch.no_grad():
        m.A_logs.copy_(torch.log(torch.tensor([3.0, 1.0, 4.0, 2.0])).repeat(m.A_logs.shape[0], 1))
    assert slowest_states(m, 2) == [1, 3]
    pruned, _ = prune_states(net, 2)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert (net(x) - pruned(x)).abs().max().item() > 1e-4


def test_prune_rejects_bad_requests():
    net = random_net("tiny", d_state=4)
    for n in (0, 4, 5):
        with pytest.raises(CmddError, match="between 1 and 3"):
            prune_states(net, n)
    with pytest.raises(CmddError, match="no selective-scan layers"):
        prune_states(random_net("tiny", mixer="cnn_only"), 2)


def _samples(root: Path) -> Path:
    """The folder layout scripts/prune_states.py reads (benchmarks/bf16_check.photos)."""
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    for sub, name in (("dpdd_1024/blur", "a.png"), ("dpdd_gif_pairs", "b_input.png")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        iio.imwrite(root / sub / name, (rng.random((48, 64, 3)) * 255).astype(np.uint8))
    return root


def test_prune_script_writes_only_within_the_rule(tmp_path):
    """The script writes pruned weights with a `pruned` card when the outputs stay within the rule,
    and exits 1 without writing when they do not."""
    from cmddcli.model.weights import load_weights, read_metadata, save_weights

    net = random_net("tiny", seed=2, d_state=4).eval()
    _silence_states(net, {n: [2, 3] for n in _ss2d_layers(net)}, "C")  # A_logs init: states 0, 1 slowest
    src = save_weights(net, tmp_path / "src.safetensors", metadata={"note": "card kept"}, preset="tiny")
    samples = _samples(tmp_path / "samples")
    # A random network on noise: bf16 itself is ~43 dB from fp32 here, so only the fp32 rule is tested.
    cmd = [sys.executable, str(ROOT / "scripts" / "prune_states.py"), str(src), "--min-psnr-bf16", "0"]
    ok = subprocess.run(cmd + [str(tmp_path / "ok.safetensors"), "--states", "2", "--samples", str(samples)],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    meta = read_metadata(tmp_path / "ok.safetensors")
    assert meta["note"].endswith("The source's note: card kept") and meta["config"]["d_state"] == 2
    assert meta["pruned"]["from"] == "src.safetensors" and len(meta["pruned"]["per_photo_db"]) == 2
    worst = meta["pruned"]["worst_db"]["pruned fp32"]  # silenced states: equal up to rounding order
    assert worst == "identical" or worst >= 60
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ok.safetensors"), framework="pt") as f:  # strict JSON: no Infinity / NaN
        json.loads(f.metadata()["cmdd"], parse_constant=lambda c: pytest.fail(f"{c} in the model card"))
    load_weights(tmp_path / "ok.safetensors")
    bad = subprocess.run(cmd + [str(tmp_path / "bad.safetensors"), "--states", "1", "--samples", str(samples)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 3 and "rules NOT met, nothing written" in bad.stdout
    assert not (tmp_path / "bad.safetensors").exists()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "d.safetensors").mkdir()
    for out, extra, words in ((tmp_path / "x.safetensors", ["--states", "4"], "between 1 and 3"),
                              (src, ["--states", "2"], "is the source weights file"),
                              (tmp_path / "afile" / "x.safetensors", ["--states", "2"], "cannot write the pruned weights"),
                              (tmp_path / "d.safetensors", ["--states", "2"], "pruned weights file is a folder"),
                              (tmp_path / "y.safetensors", ["--states", "2", "--report", str(tmp_path / "afile" / "r.md")],
                               "cannot write the report"),
                              (tmp_path / "y.safetensors", ["--states", "2", "--eval-data", str(tmp_path / "nope"),
                                                               "--samples", str(samples)], "nope"),
                              (tmp_path / "y.txt", ["--states", "2"], "must end in .safetensors"),
                              (tmp_path / "y.safetensors", ["--states", "2", "--report", str(src)], "would overwrite the source"),
                              (tmp_path / "new" / "deep" / "y.safetensors", ["--states", "2", "--samples",
                                                                             str(tmp_path / "empty")], "no photos")):
        r = subprocess.run(cmd + [str(out), *extra], capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr, (words, r.stderr)
        assert "| photo |" not in r.stdout  # refused before any photo ran
    assert not (tmp_path / "y.safetensors").exists() and not (tmp_path / "new").exists()
    load_weights(src)  # untouched


def test_default_weights_are_the_default_network_with_their_lineage():
    """The shipped default (weights v8, issue 28, session 22) is the `small-n4` network (4 SSM states:
    the network of the 12-megapixel benchmark) fine-tuned through a chain of intermediates (arms N,
    J) from v3 (packaged as `v3`), which was fine-tuned from v2 pruned to four states: each card names
    its parent by SHA-256 down to the packaged v2, every intermediate committed in training/v3 is the
    file its child's card names; the card says it was trained on real DPDD test_c scenes and records
    per-image validation and test gains all above zero (no image worse than its input), as its ship
    rule asks. v1, v2 and v3 stay loadable by name."""
    from cmddcli.fileutil import sha256_file
    from cmddcli.model.weights import default_weights_path, load_weights, packaged_weights, read_metadata

    names = packaged_weights()
    if not {"v1", "v2", "v3"} <= set(names) or not default_weights_path().is_file():
        pytest.skip("no packaged weights in this copy")
    meta = read_metadata(default_weights_path())
    assert meta["preset"] == "small-n4" and meta["config"]["d_state"] == 4
    v3_sha = sha256_file(names["v3"])
    chain, card = [], meta["fine_tuned_from"]
    while card["sha256"] != v3_sha:  # the intermediates between the default and v3, newest first
        chain.append(card)
        card = card["fine_tuned_from"]  # KeyError: the lineage does not reach v3
    v3 = card
    v2n4 = v3["fine_tuned_from"]
    assert chain and chain[-1]["name"] == "init_v3j800.safetensors"  # arm J's pick, v3's child
    assert all(c["preset"] == "small-n4" for c in chain + [v3, v2n4])
    assert v2n4["pruned_from"]["from"] == names["v2"].name
    assert v2n4["pruned_from"]["from_sha256"] == sha256_file(names["v2"])
    for card in chain + [v2n4]:
        file = ROOT / "training" / "v3" / card["name"]
        if file.is_file():
            assert card["sha256"] == sha256_file(file), card["name"]
    assert "test_c" in meta["training_data"] and "never be compared" in meta["training_data"]
    for key in ("scores_real_dpdd_validation_per_image", "scores_real_dpdd_test_per_image"):
        gains = [row["gain_psnr"] for row in meta[key]]
        assert gains and min(gains) > 0, (key, gains)
    for name in ("v1", "v2"):
        net, card = load_weights(name)
        assert card["preset"] == "small" and net.config.d_state == 16
    net, card = load_weights("v3")
    assert card["preset"] == "small-n4" and net.config.d_state == 4
