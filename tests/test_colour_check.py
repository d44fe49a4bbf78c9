"""scripts/colour_check.py and cmddcli.eval.checks.channel_shift: the mean colour shift of deblurred
photos against their inputs (issue 28's ship rule)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from cmddcli.eval.checks import channel_shift
from cmddcli.photo.arrays import write_png

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "colour_check.py"


def _photo(seed=0):
    rng = np.random.default_rng(seed)
    return uniform_filter(rng.uniform(0.2, 0.8, (64, 96, 3)), size=(5, 5, 1))


def test_sharpening_is_no_colour_shift_but_a_tint_is():
    inp = _photo()
    sharpened = np.clip(inp + 1.5 * (inp - uniform_filter(inp, size=(3, 3, 1))), 0, 1)
    whole, _ = channel_shift(sharpened, inp)
    assert np.abs(whole).max() < 0.2
    warmer = inp.copy()
    warmer[..., 0] += 2 / 255  # +2 levels of red
    whole, local = channel_shift(warmer, inp)
    assert whole == pytest.approx([2, 0, 0], abs=1e-6) and local == pytest.approx(2, abs=1e-6)
    region = inp.copy()
    region[:32, :32, 2] += 8 / 255  # one block bluer: small whole-image shift, large local one
    whole, local = channel_shift(region, inp)
    assert whole[2] == pytest.approx(8 * 32 * 32 / (64 * 96), abs=1e-6) and local == pytest.approx(8, abs=1e-6)
    with pytest.raises(ValueError, match="sizes differ"):
        channel_shift(inp[:32], inp)


def test_the_script_rules_on_the_colour_cast_not_brightness(tmp_path):
    inp = _photo()
    for folder, img in (("in", inp), ("same", inp), ("darker", inp - 3 / 255), ("tinted", np.clip(inp + [0, 0, 3 / 255], 0, 1))):
        write_png(tmp_path / folder / "a.png", (img * 255).round().astype(np.uint8))
    run = lambda *a: subprocess.run([sys.executable, str(SCRIPT), *map(str, a)], capture_output=True, text=True)
    ok = run(tmp_path / "in", tmp_path / "same", tmp_path / "darker", "--out", tmp_path / "r.md")
    assert ok.returncode == 0, ok.stderr
    table = (tmp_path / "r.md").read_text()
    assert "+0.00 / +0.00 / +0.00" in table and "-3.00 / -3.00 / -3.00 | -3.00 | 0.00" in table
    bad = run(tmp_path / "in", tmp_path / "same", tmp_path / "tinted")
    assert bad.returncode == 3 and "NOT met" in bad.stdout and "+0.00 / +0.00 / +3.00 | +1.00 | 3.00" in bad.stdout
    (tmp_path / "empty").mkdir()
    missing = run(tmp_path / "in", tmp_path / "empty")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "no output for a.png" in missing.stderr
