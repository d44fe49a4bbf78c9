"""CMDDNet: sizes pinned to the paper, every preset runs, any input size, weights round-trip."""

from pathlib import Path

import pytest
import torch

from _nets import random_net

from cmddcli.errors import CmddError, WeightsError
from cmddcli.model import PRESETS, CMDDNet, ModelConfig, model_config
from cmddcli.model.complexity import count_macs, count_params
from cmddcli.model.weights import load_state, load_weights, read_metadata, save_weights


@pytest.mark.parametrize("width,expected", [(24, 4.49e6), (36, 9.74e6), (48, 16.99e6)])
def test_parameter_counts_match_paper(width, expected):
    n = count_params(CMDDNet(model_config("paper", width=width)))
    assert abs(n - expected) / expected <= 0.005


def test_block_parameter_formula():
    # SPEC: 24c^2 + 16cR + 431c (+2c with the extra branch norm) per block.
    from cmddcli.model.blocks import CMDDBlock

    for c in (36, 72, 144, 288):
        R = -(-c // 16)
        assert count_params(CMDDBlock(c, ModelConfig())) == 24 * c * c + 16 * c * R + 433 * c


def test_macs_match_paper():
    m = count_macs(CMDDNet(ModelConfig()), 256, 256)
    assert round(m["thop"] / 1e9, 2) == 39.39
    assert 68e9 < m["full"] < 75e9  # SPEC: about 71 G with the SSM einsums and scan


def test_default_config_is_paper():
    assert CMDDNet().config == model_config("paper") == ModelConfig()


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_forward_and_backward(name):
    cfg = model_config(name)
    if cfg.width > 16:  # keep CI fast: same code paths at a smaller width
        cfg = model_config(name, width=8, blocks=(1,) * 8, d_state=4)
    torch.manual_seed(0)
    net = CMDDNet(cfg)
    net.output.reset_parameters()  # a fresh net is the identity: give gradients a path
    x = torch.rand(2, 3, 19, 24)
    y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.abs().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert net.embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (4, 3), (16, 16), (9, 31)])
def test_any_input_size(size):
    net = CMDDNet(model_config("tiny")).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        assert net(x).shape == x.shape


def test_fresh_network_is_the_identity():
    # The output conv (a residual) starts at zero; once it is non-zero the output differs.
    net = CMDDNet(model_config("tiny")).eval()
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        assert torch.equal(net(x), x)
        torch.nn.init.normal_(net.output.weight, std=0.1)
        assert not torch.allclose(net(x), x)


def test_combine_options_differ():
    a = random_net("tiny", combine="add").eval()
    b = CMDDNet(model_config("tiny", combine="mul")).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def test_ablation_variants_have_the_right_branches():
    from cmddcli.model.blocks import SS2D, WindowMSA

    def kinds(name):
        net = CMDDNet(model_config(name, width=8, blocks=(1,) * 8, d_state=4))
        blk = net.encoders[0][0]
        return blk.cnn is not None, None if blk.mixer is None else type(blk.mixer.ss2d)

    assert kinds("paper") == (True, SS2D)
    assert kinds("cnn_only") == (True, None)
    assert kinds("mamba_only") == (False, SS2D)
    assert kinds("window_attention") == (True, WindowMSA)


def test_config_validation():
    with pytest.raises(CmddError):
        model_config("nope")
    with pytest.raises(CmddError):
        ModelConfig.from_dict({"width": 8, "colour": "red"})
    with pytest.raises(CmddError):
        ModelConfig(width=7)


def test_weights_round_trip(tmp_path):
    net = random_net("tiny").eval()
    path = save_weights(net, tmp_path / "w.safetensors", metadata={"iterations": 12}, preset="tiny")
    meta = read_metadata(path)
    assert meta["preset"] == "tiny" and meta["iterations"] == 12 and meta["config"]["width"] == 8
    net2, meta2 = load_weights(path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():  # the fused CPU scan sums directions in thread order: equal to float rounding
        assert torch.allclose(net(x), net2(x), rtol=1e-5, atol=1e-5)
    # Half-precision storage loads back into float32 within fp16 rounding.
    p16 = save_weights(net, tmp_path / "w16.safetensors", dtype=torch.float16)
    net3, _ = load_weights(p16)
    assert next(net3.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert (net(x) - net3(x)).abs().max() < 5e-2


def test_weights_for_another_config_fail_clearly(tmp_path):
    path = save_weights(CMDDNet(model_config("tiny")), tmp_path / "w.safetensors")
    with pytest.raises(WeightsError, match="another model configuration: width=8"):
        load_state(CMDDNet(model_config("tiny", width=12)), path)


def test_bad_weights_files(tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        load_weights(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00not a safetensors file")
    with pytest.raises(WeightsError, match="not a safetensors"):
        load_weights(junk)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(WeightsError, match="without cmdd metadata"):
        load_weights(plain)
    pickle = tmp_path / "model.pt"
    torch.save({"a": torch.zeros(2)}, pickle)
    with pytest.raises(WeightsError, match="a PyTorch pickle, not a safetensors") as ei:
        load_weights(pickle)
    assert "export_checkpoint.py" in str(ei.value)


@pytest.mark.parametrize("change, why", [
    ({"width": 10**9}, "width must be an integer in 2..512"),      # would allocate ~100 GB
    ({"pad_multiple": 0}, "pad_multiple must be an integer"),      # was a ZeroDivisionError
    ({"expand": 0}, "expand must be an integer"),                  # was a torch ValueError
    ({"width": "16"}, "width must be an integer"),                 # was a TypeError
    ({"blocks": [1]}, "blocks must be 8 integer counts"),
    ({"leaky_slope": "x"}, "leaky_slope must be a number"),
])
def test_weights_with_a_crafted_config_fail_in_one_line(tmp_path, change, why):
    """A weights file whose metadata holds an out-of-range or ill-typed config is refused by name,
    before any network is built."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    good = save_weights(CMDDNet(model_config("tiny")), tmp_path / "w.safetensors")
    with safe_open(str(good), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["cmdd"])
    meta["config"].update(change)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"cmdd": json.dumps(meta)})
    with pytest.raises(WeightsError, match=why) as ei:
        load_weights(bad)
    assert "bad.safetensors" in str(ei.value) and "\n" not in str(ei.value)
    del meta["config"]
    save_file(tensors, str(bad), metadata={"cmdd": json.dumps(meta)})
    with pytest.raises(WeightsError, match="without a model config"):
        load_weights(bad)


def test_packaged_weight_names_resolve(tmp_path, monkeypatch):
    """--weights NAME: a packaged name loads cmddcli/weights/cmddnet_NAME.safetensors; a file of that
    name in the working folder wins; a bare unknown word is an error listing the names."""
    from cmddcli.engine.resume import weights_digest
    from cmddcli.model.weights import default_weights_path, packaged_weights, resolve_weights

    names = packaged_weights()
    assert resolve_weights(None) == default_weights_path()
    if "v1" not in names:
        pytest.skip("no packaged weights in this copy")
    assert names["default"] == default_weights_path() and resolve_weights("v1") == names["v1"]
    model, meta = load_weights("v1")
    assert meta["preset"] == "small" and not model.training
    assert not weights_digest("v1").startswith("unreadable")
    monkeypatch.chdir(tmp_path)
    save_weights(random_net("tiny"), tmp_path / "v1", preset="tiny")  # a file named like a packaged name
    assert resolve_weights("v1") == Path("v1") and load_weights("v1")[1]["preset"] == "tiny"
    with pytest.raises(WeightsError, match=r"nope: no such weights file, and not a packaged weights name \(.*v1"):
        resolve_weights("nope")
    assert resolve_weights("missing.safetensors") == Path("missing.safetensors")  # the loader says "no such file"
    with pytest.raises(WeightsError, match="no such weights file"):
        load_weights("missing.safetensors")


def test_model_card_names_no_machine_folder():
    """scripts/package_default_weights.py cuts absolute paths (checkpoint, sharp sources) to their last
    part; the packaged v2 card carries its validation and test scores and no absolute path."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "package_default_weights", Path(__file__).resolve().parents[1] / "scripts" / "package_default_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    card = mod.portable({"checkpoint": "/tmp/w/ck.pt", "data": {"path": "/work/sharp_src", "synth": "v1"},
                         "list": ["/a/b", "rel/c"], "n": 3, "root": "/"})
    assert card == {"checkpoint": "…/ck.pt", "data": {"path": "…/sharp_src", "synth": "v1"},
                    "list": ["…/b", "rel/c"], "n": 3, "root": "/"}
    from cmddcli.model.weights import packaged_weights

    if "v2" not in packaged_weights():
        pytest.skip("no packaged v2 weights in this copy")
    meta = read_metadata(packaged_weights()["v2"])
    assert meta["preset"] == "small" and meta["scores_real_dpdd_validation"][0]["count"] == 6
    assert meta["scores_real_dpdd_test"][0]["count"] == 4
    assert '"/' not in json.dumps(meta["trained_with"])


def test_model_card_lineage_and_per_image(tmp_path, tiny_weights):
    """package_default_weights.py records the parent weights (name, SHA-256, steps, CPU hours and their
    own parent) and the per-image scores from the per_image.csv beside an eval summary.json."""
    import hashlib
    import importlib.util
    import json

    from cmddcli.model.weights import load_weights, save_weights

    spec = importlib.util.spec_from_file_location(
        "package_default_weights", Path(__file__).resolve().parents[1] / "scripts" / "package_default_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net, _ = load_weights(tiny_weights)
    grand = {"name": "g.safetensors", "sha256": "0" * 64, "iterations": 5}
    parent = tmp_path / "parent.safetensors"
    save_weights(net, parent, metadata={"iterations": 1200, "cpu_hours": 1.5, "note": "arm J",
                                        "fine_tuned_from": grand}, preset="tiny")
    entry = mod.lineage(str(parent))
    assert entry["sha256"] == hashlib.sha256(parent.read_bytes()).hexdigest()
    assert (entry["name"], entry["iterations"], entry["cpu_hours"], entry["note"]) == ("parent.safetensors", 1200, 1.5, "arm J")
    assert entry["fine_tuned_from"] == grand and entry["preset"] == "tiny"
    export = tmp_path / "export.safetensors"  # scripts/export_checkpoint.py keeps the step under "train"
    save_weights(net, export, metadata={"train": {"step": 300}}, preset="tiny")
    assert mod.lineage(str(export))["iterations"] == 300
    summary = tmp_path / "ev" / "summary.json"
    summary.parent.mkdir()
    summary.write_text(json.dumps({"summary": []}))
    assert mod.per_image(summary) is None
    (summary.parent / "per_image.csv").write_text(
        "name,group,subset,height,width,psnr,ssim,mae,seconds\na,pairs,,8,8,24.5,0.61,0.04,1.0\n")
    assert mod.per_image(summary) == [{"name": "a", "psnr": 24.5, "ssim": 0.61, "mae": 0.04}]
    (summary.parent / "per_image.csv").write_text(
        "name,psnr,psnr_cf,input_psnr,gain_psnr,gain_psnr_cf,seconds\na,24.5,24.9,24.0,0.5,0.6,1.0\n")
    assert mod.per_image(summary) == [{"name": "a", "psnr": 24.5, "psnr_cf": 24.9, "input_psnr": 24.0,
                                       "gain_psnr": 0.5, "gain_psnr_cf": 0.6}]


def test_model_card_names_real_training_pairs(tmp_path):
    """A run with real pairs (issue 28) says so on its card: DPDD, its licence, that they are DPDD test_c
    scenes (never to be compared with published DPDD numbers), the share and how crops were made; the
    sharp-photo sentence says "held out" only when the run held photographs out."""
    import importlib.util

    import numpy as np

    from cmddcli.photo.arrays import write_png

    spec = importlib.util.spec_from_file_location(
        "package_default_weights", Path(__file__).resolve().parents[1] / "scripts" / "package_default_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for i in range(3):
        for side in ("blur", "sharp"):
            write_png(tmp_path / side / f"p{i}.png", np.zeros((8, 8, 3), np.uint8))
    synth_only, rec = mod.synth_run_data({"kind": "synth", "synth": "v1_noisy", "val_sharp": "/x/skimage"})
    assert "held out" in synth_only and "DPDD" not in synth_only and "real_pairs" not in rec
    data = {"kind": "synth", "synth": "v1_noisy", "mix": 0.5, "real_path": str(tmp_path), "real_aspect": "as_is",
            "real_register": "pixel", "real_blur_bias": 0.75}
    text, rec = mod.synth_run_data(data, "colour")
    assert text.startswith("3 real DPDD pairs") and "test_c" in text and "MIT" in text and "never be compared" in text
    assert "50 %" in text and "on-the-fly synthetic" in text and "held out" not in text
    assert rec["real_pairs"] == {"share": 0.5, "pairs": 3, "aspect": "as_is", "register": "pixel", "target_align": "colour"}
    real_only, _ = mod.synth_run_data({**data, "mix": 1.0})
    assert "100 %" in real_only and "on-the-fly synthetic" not in real_only
