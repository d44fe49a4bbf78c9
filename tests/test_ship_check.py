"""scripts/ship_check.py: the ship rule's validation-side clauses and its pick, for candidate weights."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _nets import random_net
from cmddcli.model.residual_gain import scale_residual
from cmddcli.model.weights import load_weights, save_weights

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "ship_check.py"
spec = importlib.util.spec_from_file_location("ship_check", SCRIPT)
ship = importlib.util.module_from_spec(spec)
sys.modules["ship_check"] = ship  # a dataclass module must be importable by name
spec.loader.exec_module(ship)


class _Args:
    halo_max, probe_min, max_cast = 0.136, 1.0, 1.0


def _scores(name, gain, cf, halo=(0.1, 0.02), probe=1.2, cast=0.1, worst=0.2):
    return ship.Scores(name, gain, cf, worst, worst, halo, probe, cast)


def test_each_clause_is_read_strictly_and_the_pick_breaks_near_ties_by_colour_fair_gain():
    bar = _scores("bar", 0.656, 0.680)
    cands = [_scores("a", 0.700, 0.710),                   # best raw gain
             _scores("b", 0.685, 0.730),                   # within 0.02 dB of a, higher cf: the pick
             _scores("c", 0.670, 0.760),                   # higher cf still, but 0.03 dB below a
             _scores("d", 0.750, 0.790, halo=(0.110, 0.027)),  # 0.137 % > 0.136 %
             _scores("e", 0.656, 0.700),                   # ties the bar's raw gain: not above it
             _scores("f", 0.720, 0.740, worst=0.0),        # one image no better than its input
             _scores("g", 0.720, 0.740, probe=None),       # probe not measured
             _scores("h", 0.720, 0.740, cast=1.0)]         # cast must stay under 1 level
    for s in cands:
        ship.judge(s, bar, _Args)
    assert [s.failed for s in cands] == [[], [], [], ["halo"], ["beats bar"], ["no image worse"], ["probe"],
                                         ["colour"]]
    assert ship.pick(cands, 0.02).weights == "b"
    assert ship.pick(cands[3:], 0.02) is None
    assert _scores("x", 0, 0, halo=(0.1004, 0.0356)).halo_total == pytest.approx(0.136)  # three decimals, as printed


def _pairs(folder: Path, net, seed: int, n: int = 2):
    """n pairs whose target is x + 1.4 (net(x) - x): net restores part of the way, between input and target."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        x = (rng.uniform(0.3, 0.7, (48, 64, 3)) * 255).round() / 255
        with torch.no_grad():
            y = net(torch.from_numpy(x).float().permute(2, 0, 1)[None])[0].permute(1, 2, 0).double().numpy()
        t = np.clip(x + 1.4 * (y - x), 0, 1)
        for sub, img in (("blur", x), ("sharp", t)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / sub / f"p{i}.png")


def test_script_scores_candidates_against_a_bar_and_picks(tmp_path):
    """A network that restores more of each (made-up) blur than the bar (the same network with half its
    correction) passes every clause and is picked; measured against itself it does not beat the bar
    (strict), so nothing is picked and the exit status is 3."""
    cand = tmp_path / "cand.safetensors"
    save_weights(random_net("tiny", seed=5).eval(), cand, metadata={"note": "test"}, dtype=torch.float32, preset="tiny")
    net, _ = load_weights(cand)
    net = net.float().eval()
    bar = tmp_path / "bar.safetensors"
    save_weights(scale_residual(load_weights(cand)[0].float(), 0.5), bar, metadata={"note": "bar"},
                 dtype=torch.float32, preset="tiny")
    _pairs(tmp_path / "val", net, 1)
    _pairs(tmp_path / "probe", net, 2)
    (tmp_path / "photos").mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(
            tmp_path / "photos" / f"ph{i}.jpg")
    common = ["--val", tmp_path / "val", "--probe", tmp_path / "probe", "--photos", tmp_path / "photos",
              "--max-cast", "255", "--threads", "1"]
    run = lambda *a: subprocess.run([sys.executable, str(SCRIPT), *map(str, a)], capture_output=True, text=True,
                                    timeout=300)
    r = run(cand, "--bar", bar, *common, "--out", tmp_path / "t.md")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith(f"| {cand} "))
    assert row.endswith("| none |")  # every clause met (halo: the output lies between input and target)
    assert f"Pick: {cand}" in r.stdout and (tmp_path / "t.md").read_text().strip().endswith(f"Pick: {cand}")
    same = run(cand, "--bar", cand, *common)
    assert same.returncode == 3 and "beats bar" in same.stdout and "Pick: none" in same.stdout
    missing = run(cand, "--bar", bar, *common[:-2], "--photos", tmp_path / "nowhere")
    assert missing.returncode == 1 and "nowhere" in missing.stderr and missing.stderr.count("\n") == 1
