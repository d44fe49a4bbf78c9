"""scripts/degrade_val.py: JPEG and GIF (palette) copies of validation pairs."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmddcli.errors import CmddError

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "degrade_val.py"
spec = importlib.util.spec_from_file_location("degrade_val", SCRIPT)
dv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dv)


def _pairs(root: Path, n: int = 2) -> Path:
    y, x = np.mgrid[0:48, 0:64] / 48.0
    for sub in ("source", "target"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        img = np.stack([0.5 + 0.4 * np.sin(5 * x + i + c) * np.cos(3 * y - c) for c in (0.0, 1.0, 2.0)], -1)
        for sub, im in (("target", img), ("source", 0.9 * img + 0.05)):
            Image.fromarray(np.round(im * 255).astype(np.uint8)).save(root / sub / f"p{i}.png")
    return root


def _colours(path: Path) -> int:
    return len(np.unique(np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3), axis=0))


def test_gif_copy_quantises_input_and_target(tmp_path):
    data = _pairs(tmp_path / "data")
    for dither in (False, True):
        out = tmp_path / f"gif{int(dither)}"
        assert dv.degrade(data, out, gif=16, dither=dither) == 2
        for sub in ("source", "target"):
            files = sorted((out / sub).glob("*.png"))
            assert [f.stem for f in files] == ["p0", "p1"]
            assert all(_colours(f) <= 16 for f in files) and _colours(data / sub / "p0.png") > 16
    a = np.asarray(Image.open(tmp_path / "gif0" / "source" / "p0.png"))
    b = np.asarray(Image.open(tmp_path / "gif1" / "source" / "p0.png"))
    assert not np.array_equal(a, b)  # dithering maps pixels differently


def test_jpeg_copy_compresses_inputs_only(tmp_path):
    """The JPEG file decodes to the synthesiser's jpeg_roundtrip of the input; targets are copied; the
    copy reads back as pairs."""
    from cmddcli.data.synth import jpeg_roundtrip
    from cmddcli.eval.protocol import gather_items

    data = _pairs(tmp_path / "data")
    out = tmp_path / "j"
    dv.degrade(data, out, jpeg=30)
    with Image.open(out / "source" / "p0.jpg") as im:
        assert im.format == "JPEG"
        src = np.asarray(im.convert("RGB")).astype(float)
    ref = np.asarray(Image.open(data / "source" / "p0.png")).astype(float)
    assert 0 < np.abs(src - ref).mean() < 8
    assert np.array_equal(src, np.round(255.0 * jpeg_roundtrip((ref / 255.0).astype(np.float32), 30)))
    assert len(gather_items(data=[str(out)])) == 2
    assert np.array_equal(np.asarray(Image.open(out / "target" / "p0.png")), np.asarray(Image.open(data / "target" / "p0.png")))


def test_bad_arguments_are_one_line_errors(tmp_path):
    data = _pairs(tmp_path / "data")
    for kw, text in ((dict(), "exactly one"), (dict(jpeg=60, gif=256), "exactly one"), (dict(gif=300), "got 300"),
                     (dict(jpeg=-5), "got -5"), (dict(jpeg=60, dither=True), "--gif only"),
                     (dict(gif=8, split="test"), "test-only")):
        with pytest.raises(CmddError, match=text):
            dv.degrade(data, tmp_path / "o", **kw)
    with pytest.raises(CmddError, match="inside the data folder"):
        dv.degrade(data, data / "copy", gif=8)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(CmddError, match="not an empty folder"):
        dv.degrade(data, tmp_path / "full", gif=8)
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nothing"), str(tmp_path / "o2"), "--gif", "8"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")


def test_output_is_all_or_nothing(tmp_path, monkeypatch):
    """Two pairs with one file stem are refused before anything is written; an image failing halfway
    leaves no output folder behind (so a rerun is not blocked by a partial copy)."""
    data = _pairs(tmp_path / "data")
    items = dv.gather_items(data=[str(data)])
    monkeypatch.setattr(dv, "gather_items", lambda **kw: [items[0], items[0]])
    with pytest.raises(CmddError, match="several pairs named p0"):
        dv.degrade(data, tmp_path / "dup", gif=8)
    assert not (tmp_path / "dup").exists()
    monkeypatch.setattr(dv, "gather_items", lambda **kw: items)
    calls = []

    def failing(path):
        calls.append(path)
        if len(calls) > 2:
            raise CmddError(f"{path}: unreadable")
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0

    monkeypatch.setattr(dv, "load_for_eval", failing)
    with pytest.raises(CmddError, match="unreadable"):
        dv.degrade(data, tmp_path / "half", gif=8)
    assert not (tmp_path / "half").exists() and not list(tmp_path.glob(".half*"))
    monkeypatch.undo()
    assert dv.degrade(data, tmp_path / "half", gif=8) == 2
