"""`cmdd deblur --report`: the static HTML page, checked in a real headless Chromium."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from _browser import Browser, find_chromium
from cmddcli.cli.main import app


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    import cmddcli.runtime as D

    monkeypatch.setattr(D, "available_cores", lambda: 1)


@pytest.fixture
def report_dir(tmp_path, tiny_weights):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(src / "a photo #1.png")
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(src / "b.jpg", quality=95)
    (src / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["deblur", str(src), "-o", str(out), "--report", "--strength", "0.7",
                                 "--weights", str(tiny_weights)], catch_exceptions=False)
    assert r.exit_code == 1  # broken.png fails; the report still covers every file
    return out


def test_report_is_static_and_complete(report_dir):
    page = (report_dir / "index.html").read_text()
    assert page.count('class="card') == 3
    assert "strength" in page and "0.7" in page and "time" in page
    assert "not an image" in page  # the failed file's reason
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) == 4 and all((report_dir / s).is_file() for s in srcs)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from the network
    for s in srcs:
        with Image.open(report_dir / s) as im:
            assert im.format == "JPEG"


def test_report_in_headless_chromium(report_dir, tmp_path):
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    b = Browser(exe, 1000, 800)
    try:
        b.goto((report_dir / "index.html").as_uri())
        imgs = b.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert len(imgs) == 4 and all(ok and w > 0 for ok, w in imgs), imgs
        box = b.evaluate("(() => { const r = document.querySelector('.compare').getBoundingClientRect();"
                         " return [r.left, r.top, r.width, r.height]; })()")
        x0, y0, w, h = box
        clip = "getComputedStyle(document.querySelector('.compare img.after')).clipPath"
        assert "50%" in b.evaluate(clip)
        b.mouse("mousePressed", x0 + w / 2, y0 + h / 2)  # a real drag, not a synthetic event
        b.mouse("mouseMoved", x0 + w / 4, y0 + h / 2)
        b.mouse("mouseReleased", x0 + w / 4, y0 + h / 2, buttons=0)
        value = float(b.evaluate("document.querySelector('.compare input').value"))
        assert 20 <= value <= 30, value
        assert f"{value:g}%" in b.evaluate(clip)
        shot = Path(os.environ.get("CMDD_REPORT_SCREENSHOT", tmp_path / "report.png"))
        b.screenshot(str(shot))
        with Image.open(shot) as im:
            assert im.size == (1000, 800)
    finally:
        b.close()
