"""`cmdd deblur` and the batch runner: discovery, mirroring, skip/overwrite, failures, JSON, torchrun."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms
from typer.testing import CliRunner

from cmddcli.engine import runner as batch
from cmddcli.engine.runner import BatchOptions, Job, discover, merge_reports, plan, shard
from cmddcli.runtime import DistInfo
from cmddcli.cli.main import app
from cmddcli.errors import CmddError
from cmddcli.photo import png

SAMPLES = Path("/work/shared/samples")
if not SAMPLES.is_dir():
    SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
needs_samples = pytest.mark.skipif(not (SAMPLES / "raw").is_dir(), reason="shared/samples not present")
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """The CLI gives torch every core; on a shared 2-core runner one thread is much faster."""
    import cmddcli.runtime as D

    monkeypatch.setattr(D, "available_cores", lambda: 1)


def img(h=24, w=32, seed=0, depth=8, ch=3):
    rng = np.random.default_rng(seed)
    top = 255 if depth == 8 else 65535
    a = (rng.random((h, w, ch)) * 0.8 + 0.1) * top
    a = a.astype(np.uint8 if depth == 8 else np.uint16)
    return a[..., 0] if ch == 1 else a


@pytest.fixture
def tree(tmp_path):
    """in/a.jpg (EXIF orientation 6 + ICC), in/sub/b.png (16-bit RGB), in/sub/deep/c.tif (16-bit gray),
    in/sub/d.png (8-bit RGBA), in/notes.txt (ignored)."""
    root = tmp_path / "in"
    (root / "sub" / "deep").mkdir(parents=True)
    ex = Image.Exif()
    ex[274] = 6
    ex[271] = "TestMake"
    Image.fromarray(img(20, 28)).save(root / "a.jpg", exif=ex, icc_profile=ICC, quality=95)
    (root / "sub" / "b.png").write_bytes(png.write_png(img(16, 24, 1, 16)))
    tifffile.imwrite(root / "sub" / "deep" / "c.tif", img(18, 22, 2, 16, 1), photometric="minisblack")
    Image.fromarray(img(16, 16, 3, 8, 4)).save(root / "sub" / "d.png")
    (root / "notes.txt").write_text("not an image")
    return root


def run(args, weights=None):
    runner = CliRunner()
    full = ["deblur", *map(str, args)] + (["--weights", str(weights)] if weights else [])
    return runner.invoke(app, full, catch_exceptions=False)


# ------------------------------------------------------------------------------------ CLI


def test_mirrors_tree_keeps_depth_gray_alpha_exif(tree, tmp_path, tiny_weights):
    out = tmp_path / "out"
    r = run([tree, "-o", out, "--recursive", "--json"], tiny_weights)
    assert r.exit_code == 0, r.stderr
    payload = json.loads(r.stdout)  # stdout is JSON only
    assert payload["counts"]["done"] == 4 and payload["counts"]["failed"] == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        ".cmdd/records/a.jpg.json", ".cmdd/records/sub/b.png.json", ".cmdd/records/sub/d.png.json",
        ".cmdd/records/sub/deep/c.tif.json", ".cmdd/summary.json", "a.jpg", "sub/b.png", "sub/d.png",
        "sub/deep/c.tif"]
    a = Image.open(out / "a.jpg")
    assert a.size == (20, 28) and a.getexif()[274] == 1 and a.getexif()[271] == "TestMake"
    assert a.info["icc_profile"] == ICC
    b, info = png.read_png((out / "sub" / "b.png").read_bytes())
    assert b.dtype == np.uint16 and b.shape == (16, 24, 3)
    c = tifffile.imread(out / "sub" / "deep" / "c.tif")
    assert c.dtype == np.uint16 and c.shape == (18, 22)
    d = np.asarray(Image.open(out / "sub" / "d.png"))
    assert d.shape == (16, 16, 4)
    np.testing.assert_array_equal(d[..., 3], img(16, 16, 3, 8, 4)[..., 3])  # alpha passed through
    summary = json.loads((out / ".cmdd" / "summary.json").read_text())
    assert summary["settings"]["engine"]["preset"] == "tiny"
    assert summary["settings"]["raw_development"]["postprocess"]["no_auto_bright"] is True


def test_out_is_the_same_option_as_output(tree, tmp_path, tiny_weights):
    """--out (the spelling of eval, train and bench) names the same output folder as --output / -o."""
    r = run([tree / "a.jpg", "--out", tmp_path / "o", "--json"], tiny_weights)
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "o" / "a.jpg").is_file() and json.loads(r.stdout)["counts"]["done"] == 1


def test_weights_by_packaged_name(tree, tmp_path):
    """--weights v1 (a packaged name, `cmdd info` lists them) works; an unknown word is one line, exit 1."""
    from cmddcli.model.weights import packaged_weights

    if "v1" not in packaged_weights():
        pytest.skip("no packaged weights in this copy")
    r = run([tree / "a.jpg", "-o", tmp_path / "o", "--weights", "v1", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["counts"]["done"] == 1
    r = run([tree / "a.jpg", "-o", tmp_path / "o2", "--weights", "v9"])
    assert r.exit_code == 1 and "v9: no such weights file, and not a packaged weights name" in r.stderr
    assert "Traceback" not in r.stderr


def test_not_recursive_skip_existing_and_overwrite(tree, tmp_path, tiny_weights):
    out = tmp_path / "out"
    r = run([tree, "-o", out, "--json"], tiny_weights)
    assert r.exit_code == 0 and json.loads(r.stdout)["counts"]["done"] == 1  # only a.jpg at top level
    before = (out / "a.jpg").stat().st_mtime_ns
    r = run([tree, "-o", out, "--json"], tiny_weights)
    counts = json.loads(r.stdout)["counts"]
    assert r.exit_code == 0 and counts["skipped"] == 1 and counts["done"] == 0
    assert (out / "a.jpg").stat().st_mtime_ns == before
    r = run([tree, "-o", out, "--json", "--overwrite"], tiny_weights)
    assert json.loads(r.stdout)["counts"]["done"] == 1


def test_failures_are_reported_and_batch_goes_on(tmp_path, tiny_weights):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(img()).save(src / "good.png")
    (src / "zero.jpg").write_bytes(b"")
    (src / "fake.png").write_text("I am text")
    Image.new("RGB", (8, 8)).save(src / "black.png")
    out = tmp_path / "out"
    r = run([src, "-o", out], tiny_weights)
    assert r.exit_code == 1
    assert "empty file" in r.stderr and "not an image" in r.stderr
    assert "black.png" not in r.stderr  # an all-black photo is a photo (only a RAW that develops to black fails)
    assert (out / "good.png").is_file()
    assert (out / "black.png").is_file()  # (random test weights: its pixels are not checked)
    assert sorted(p.name for p in out.iterdir()) == [".cmdd", "black.png", "good.png"]  # no partial files
    r = run([src, "-o", out, "--json"], tiny_weights)
    payload = json.loads(r.stdout)
    assert r.exit_code == 1 and payload["counts"] == {"done": 0, "skipped": 2, "failed": 2, "planned": 0}
    assert all(f["reason"] and "\n" not in f["reason"] for f in payload["files"] if f["status"] == "failed")


@needs_samples
def test_real_raw_and_edge_cases(tmp_path, tiny_weights):
    src = tmp_path / "raw"
    shutil.copytree(SAMPLES / "raw", src)
    out = tmp_path / "out"
    r = run([src, "-o", out, "--recursive", "--raw-half-size", "--json"], tiny_weights)
    assert r.exit_code == 1
    files = {Path(f["input"]).name: f for f in json.loads(r.stdout)["files"]}
    assert "SOURCES.md" not in files
    for name in ("RAW_KODAK_DC50.KDC", "canon_eos_6d.dng", "pidng_cfa_640x480_test.dng"):
        assert files[name]["status"] == "done", files[name]
        t = tifffile.imread(out / (Path(name).stem + ".tif"))
        assert t.dtype == np.uint16 and t.ndim == 3
    assert tifffile.imread(out / "pidng_cfa_640x480_test.tif").shape == (240, 320, 3)
    # --raw-half-size is recorded per file as applied or not (LibRaw ignores it for LinearRaw DNGs),
    # in the summary and in the resume record.
    assert files["pidng_cfa_640x480_test.dng"]["raw"]["half_size_applied"] is True
    assert files["canon_eos_6d.dng"]["raw"]["half_size_applied"] is False
    assert any("ignored by LibRaw" in w for w in files["canon_eos_6d.dng"]["warnings"])
    records = [json.loads(p.read_text()) for p in (out / ".cmdd").rglob("*.json") if p.name != "summary.json"]
    applied = {Path(r["output"]).name: r["raw_development_applied"]["half_size_applied"]
               for r in records if "raw_development_applied" in r}
    assert applied["canon_eos_6d.tif"] is False and applied["pidng_cfa_640x480_test.tif"] is True
    bad = {n: f["reason"] for n, f in files.items() if f["status"] == "failed"}
    assert set(bad) == {"IMG_1361_iphone12pro_pruned.dng",
                        "nikon_z_9_high_efficiency_compressed_dx_cropped_max_overexposed.dng",
                        "sony_alpha_a7iii_truncated.ARW"}
    assert "all-black" in bad["IMG_1361_iphone12pro_pruned.dng"]
    assert not (out / "edge_cases").exists() or not any((out / "edge_cases").iterdir())


@needs_samples
def test_real_defocused_jpeg(tmp_path, tiny_weights):
    f = SAMPLES / "defocus" / "blurred_only" / "restormer_demo_couple.jpg"
    out = tmp_path / "out"
    r = run([f, "-o", out, "--suffix", "_sharp", "--ext", "png", "--json", "--tile", "256"], tiny_weights)
    assert r.exit_code == 0, r.stderr
    o = Image.open(out / "restormer_demo_couple_sharp.png")
    assert o.size == Image.open(f).size and o.info.get("icc_profile") == Image.open(f).info.get("icc_profile")


def test_refuses_to_overwrite_inputs(tmp_path, tiny_weights):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(img()).save(src / "a.png")
    data = (src / "a.png").read_bytes()
    r = run([src, "-o", src, "--json"], tiny_weights)
    assert r.exit_code == 1
    assert "input file" in json.loads(r.stdout)["files"][0]["reason"]
    assert (src / "a.png").read_bytes() == data
    r = run([src, "-o", src, "--suffix", "_sharp", "--json"], tiny_weights)  # with a suffix it is fine
    assert r.exit_code == 0 and (src / "a_sharp.png").is_file()
    # A second run does not take its own output for an input: a.png is skipped, nothing else happens.
    r = run([src, "-o", src, "--suffix", "_sharp", "--json"], tiny_weights)
    payload = json.loads(r.stdout)
    assert r.exit_code == 0 and payload["counts"] == {"done": 0, "skipped": 1, "failed": 0, "planned": 0}
    assert [Path(f["input"]).name for f in payload["files"]] == ["a.png"]
    assert not (src / "a_sharp_sharp.png").exists()
    # The same through a shell-expanded glob (files named one by one) and a quoted glob.
    for args in ([src / "a.png", src / "a_sharp.png"], [str(src / "*.png")]):
        r = run([*args, "-o", src, "--suffix", "_sharp", "--json"], tiny_weights)
        payload = json.loads(r.stdout)
        assert r.exit_code == 0 and [Path(f["input"]).name for f in payload["files"]] == ["a.png"], args
        assert payload["counts"]["skipped"] == 1 and not (src / "a_sharp_sharp.png").exists()
    # ... while a file of that name that cmdd did not make is still an input, and so is an output
    # that a photo was copied over since (the record no longer describes it).
    shutil.copy(src / "a.png", src / "b_sharp.png")
    r = run([src, "-o", src, "--suffix", "_sharp", "--json", "--dry-run"], tiny_weights)
    assert {Path(f["input"]).name for f in json.loads(r.stdout)["files"]} == {"a.png", "b_sharp.png"}
    Image.fromarray(img(seed=9)).save(src / "a_sharp.png")
    r = run([src, "-o", src, "--suffix", "_sharp", "--json", "--dry-run"], tiny_weights)
    assert {Path(f["input"]).name for f in json.loads(r.stdout)["files"]} == {"a.png", "a_sharp.png", "b_sharp.png"}


def test_scan_backend_that_cannot_run_here_is_one_error(tmp_path, tiny_weights, monkeypatch):
    """`--scan triton` on a CPU is one line before any photo (it was one failure per photo)."""
    monkeypatch.setenv("CMDD_SCAN", "auto")  # --scan sets it for the process: undone after the test
    for n in "ab":
        Image.fromarray(img()).save(tmp_path / f"{n}.png")
    r = run([tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "out", "--scan", "triton", "--device", "cpu"],
            tiny_weights)
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and "triton" in r.stderr, r.stderr
    assert not any((tmp_path / "out").glob("*.png"))


def test_output_name_too_long_fails_per_file_and_dry_run_checks_the_engine(tmp_path, tiny_weights):
    """A --suffix that makes the output name too long for the file system fails each file with the
    reason (it raised in the resume check); a dry run refuses what the real run refuses up front."""
    Image.fromarray(img()).save(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    r = run([tmp_path / "a.png", "-o", tmp_path / "out", "--suffix", "x" * 300, "--json"], tiny_weights)
    payload = json.loads(r.stdout)
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert "too long" in payload["files"][0]["reason"].lower()
    r = run([tmp_path / "a.png", "-o", tmp_path / "out", "--dry-run", "--device", "gpu"], tiny_weights)
    assert r.exit_code == 1 and "unknown device 'gpu'" in r.stderr


def test_strength_warning_reaches_the_terminal(tmp_path, tiny_weights):
    """Warnings of the finishing step (--strength > 1, --focus auto finding no background) are logged
    like the reader's, not only stored in the summary."""
    Image.fromarray(img()).save(tmp_path / "a.png")
    r = run([tmp_path / "a.png", "-o", tmp_path / "out", "--strength", "1.2"], tiny_weights)
    assert r.exit_code == 0 and "extrapolates" in r.stderr, r.stderr


def test_suffix_with_a_path_separator_is_refused(tmp_path, tiny_weights):
    """`--suffix "/../../x/other"` once wrote (and overwrote) files outside -o: now a one-line error,
    exit 1, before anything is written."""
    src, other = tmp_path / "in", tmp_path / "x"
    src.mkdir(), other.mkdir()
    Image.fromarray(img()).save(src / "a.png")
    Image.fromarray(img(seed=3)).save(other / "other.jpg")
    before = (other / "other.jpg").read_bytes()
    for suffix in ("/../../x/other", "/x", "\\x"):
        r = run([src / "a.png", "-o", tmp_path / "out", "--suffix", suffix, "--ext", "jpg"], tiny_weights)
        assert r.exit_code == 1 and "--suffix" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (other / "other.jpg").read_bytes() == before and not (tmp_path / "out").exists()
    with pytest.raises(CmddError, match="suffix"):
        BatchOptions(out_dir=tmp_path, suffix="a/b")


def test_repeat_into_the_input_folder_through_a_symlinked_subfolder(tmp_path, tiny_weights):
    src, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    src.mkdir()
    elsewhere.mkdir()
    Image.fromarray(img()).save(src / "a.png")
    Image.fromarray(img(seed=2)).save(elsewhere / "b.png")
    (src / "sub").symlink_to(elsewhere, target_is_directory=True)
    for done in (2, 0):
        r = run([src, "-o", src, "-r", "--suffix", "_s", "--json"], tiny_weights)
        payload = json.loads(r.stdout)
        assert r.exit_code == 0 and payload["counts"]["done"] == done and len(payload["files"]) == 2
    assert sorted(p.name for p in elsewhere.iterdir()) == ["b.png", "b_s.png"]


def test_resume_record_holds_engine_settings_and_raw_only_for_raw(tmp_path, tiny_weights):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(img()).save(src / "a.png")
    out = tmp_path / "out"
    assert run([src, "-o", out, "--json"], tiny_weights).exit_code == 0
    rec = json.loads((out / ".cmdd" / "records" / "a.png.json").read_text())
    assert rec["settings"]["engine"] == {"precision": "auto", "tile": "auto", "overlap": 32}  # as given
    assert rec["output_file"]["size"] == (out / "a.png").stat().st_size
    assert "raw_development" not in rec["settings"]  # a PNG is not developed
    r = run([src, "-o", out, "--json", "--raw-linear"], tiny_weights)  # RAW settings: nothing to redo
    assert r.exit_code == 0 and json.loads(r.stdout)["counts"]["skipped"] == 1
    r = run([src, "-o", out, "--json", "--tile", "256"], tiny_weights)  # another tile: not kept silently
    reason = json.loads(r.stdout)["files"][0]["reason"]
    assert r.exit_code == 1 and "other settings (engine.tile)" in reason
    # A record from before the engine settings (and with the RAW development of every file) still matches.
    old = dict(rec["settings"])
    old.pop("engine")
    old["raw_development"] = {"whatever": 1}
    (out / ".cmdd" / "records" / "a.png.json").write_text(json.dumps({**rec, "settings": old}))
    r = run([src, "-o", out, "--json", "--tile", "256"], tiny_weights)
    assert r.exit_code == 0 and json.loads(r.stdout)["counts"]["skipped"] == 1


def test_output_collisions_fail_the_second(tmp_path, tiny_weights):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(img()).save(src / "a.jpg")
    Image.fromarray(img(seed=1)).save(src / "a.png")
    r = run([src, "-o", tmp_path / "out", "--ext", "png", "--json"], tiny_weights)
    payload = json.loads(r.stdout)
    assert r.exit_code == 1 and payload["counts"]["done"] == 1 and payload["counts"]["failed"] == 1
    assert "would also be the output of" in [f for f in payload["files"] if f["status"] == "failed"][0]["reason"]


def test_side_outputs_never_replace_inputs_or_foreign_files(tmp_path, tiny_weights):
    """--save-blur-map's files are claimed like outputs: an input of that name, another input's
    output, or a file that exists without its output is not replaced (data loss seen in a review)."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(img()).save(src / "a.png")
    Image.fromarray(img(seed=1)).save(src / "a_s_blurmap.png")
    before = (src / "a_s_blurmap.png").read_bytes()
    r = run([src, "-o", src, "--suffix", "_s", "--save-blur-map", "--json"], tiny_weights)
    files = {Path(f["input"]).name: f for f in json.loads(r.stdout)["files"]}
    assert r.exit_code == 1 and files["a.png"]["status"] == "failed"
    assert "is an input file" in files["a.png"]["reason"]
    assert (src / "a_s_blurmap.png").read_bytes() == before
    # a file of that name in -o, without the output it belongs to: refused, then replaced with --overwrite
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_blurmap.png").write_bytes(b"mine")
    r = run([src / "a.png", "-o", out, "--save-blur-map", "--json"], tiny_weights)
    assert r.exit_code == 1 and "exists and is not from this output" in json.loads(r.stdout)["files"][0]["reason"]
    assert (out / "a_blurmap.png").read_bytes() == b"mine" and not (out / "a.png").exists()
    r = run([src / "a.png", "-o", out, "--save-blur-map", "--overwrite"], tiny_weights)
    assert r.exit_code == 0 and (out / "a_blurmap.png").read_bytes()[:4] == b"\x89PNG"
    r = run([src / "a.png", "-o", out, "--save-blur-map", "--json"], tiny_weights)  # its own: resumed
    assert r.exit_code == 0 and json.loads(r.stdout)["counts"]["skipped"] == 1


def test_report_does_not_replace_a_foreign_index(tmp_path, tiny_weights):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(img()).save(src / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("<html>my own page</html>")
    r = run([src, "-o", out, "--report"], tiny_weights)
    assert r.exit_code == 1 and "is not a cmdd report" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (out / "index.html").read_text() == "<html>my own page</html>" and not (out / "a.png").exists()
    (out / "index.html").unlink()
    assert run([src, "-o", out, "--report"], tiny_weights).exit_code == 0
    assert run([src, "-o", out, "--report"], tiny_weights).exit_code == 0  # its own report is replaced


def test_resume_does_not_keep_an_output_changed_after_it_was_written(tmp_path, tiny_weights):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(img()).save(src / "a.png")
    out = tmp_path / "out"
    assert run([src, "-o", out], tiny_weights).exit_code == 0
    (out / "a.png").write_bytes(b"junk")
    r = run([src, "-o", out, "--json"], tiny_weights)
    assert r.exit_code == 1 and "was changed after cmdd wrote it" in json.loads(r.stdout)["files"][0]["reason"]


def test_16_bit_request_for_a_jpeg_output_fails_the_file(tmp_path, tiny_weights):
    Image.fromarray(img()).save(tmp_path / "a.jpg")
    r = run([tmp_path / "a.jpg", "-o", tmp_path / "out", "--bits", "16", "--json"], tiny_weights)
    f = json.loads(r.stdout)["files"][0]
    assert r.exit_code == 1 and f["status"] == "failed" and "holds 8 bits" in f["reason"]


def test_symlink_loop_fails_that_file_only(tmp_path, tiny_weights):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(img()).save(src / "ok.png")
    (src / "x.png").symlink_to("x.png")
    r = run([src, "-o", tmp_path / "out", "--json"], tiny_weights)
    files = {Path(f["input"]).name: f for f in json.loads(r.stdout)["files"]}
    assert r.exit_code == 1 and files["ok.png"]["status"] == "done"
    assert "leads nowhere" in files["x.png"]["reason"]


def test_resume_record_of_a_long_output_name(tmp_path, tiny_weights):
    name = "x" * 240 + ".png"  # its record name (+ "_sharp" + ".json") would pass 255 bytes
    Image.fromarray(img()).save(tmp_path / name)
    out = tmp_path / "out"
    r = run([tmp_path / name, "-o", out, "--suffix", "_sharp"], tiny_weights)
    assert r.exit_code == 0 and "not written" not in r.stderr
    r = run([tmp_path / name, "-o", out, "--suffix", "_sharp", "--json"], tiny_weights)
    assert r.exit_code == 0 and json.loads(r.stdout)["counts"]["skipped"] == 1


def test_glob_dry_run_and_empty_input(tree, tmp_path):
    out = tmp_path / "out"
    # dry run never loads the model: a missing weights file does not matter
    r = run([str(tree / "sub" / "*.png"), "-o", out, "--dry-run", "--json", "--weights", tmp_path / "nope.safetensors"])
    payload = json.loads(r.stdout)
    assert r.exit_code == 0 and payload["counts"]["planned"] == 2
    assert {Path(f["output"]).name for f in payload["files"]} == {"b.png", "d.png"}
    assert not out.exists()
    r = run([tree, "-o", out, "--dry-run", "-r"])
    assert r.exit_code == 0 and "would be done" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run([empty, "-o", out])
    assert r.exit_code == 1 and "no images found" in r.stderr and "--recursive" not in r.stderr
    r = run([str(tmp_path / "*.nothing"), "-o", out])
    assert r.exit_code == 1 and "no images found" in r.stderr and "--recursive" not in r.stderr
    (empty / "sub").mkdir()
    Image.fromarray(img()).save(empty / "sub" / "x.png")
    r = run([empty, "-o", out])  # the only image is one level down: say how to reach it
    assert r.exit_code == 1 and "use --recursive for sub-folders" in " ".join(r.stderr.split())


def test_unusable_output_folder_fails_before_any_work(tree, tmp_path, tiny_weights):
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"")
    r = run([tree, "-o", blocker / "out", "--weights", tiny_weights])
    assert r.exit_code == 1 and "cannot create the output folder" in r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    r = run([tree, "-o", blocker, "--weights", tiny_weights])  # -o names an existing file
    assert r.exit_code == 1 and "-o must be a folder" in r.stderr


def test_missing_weights_and_bad_options(tree, tmp_path):
    r = run([tree, "-o", tmp_path / "o", "--weights", tmp_path / "nope.safetensors"])
    assert r.exit_code == 1 and "not found" in r.stderr
    r = run([tree, "-o", tmp_path / "o", "--ext", "bmp"])
    assert r.exit_code == 1 and "--ext" in r.stderr
    for args, words in ((["--tile", "16"], "--tile must be 0"), (["--tile", "128", "--overlap", "65"], "half the tile"),
                        (["--ext", "jpg", "--bit-depth", "16"], "--bit-depth 16 needs")):
        r = run([tree, "-o", tmp_path / "o", *args])
        assert r.exit_code == 1 and words in r.stderr and "Traceback" not in r.stderr, args
    r = run([tree, "-o", tmp_path / "o2", "--scan", "nope"])  # a usage error before any file is read
    assert r.exit_code == 2 and "unknown scan backend 'nope'" in r.stderr and not (tmp_path / "o2").exists()


def test_ctrl_c_leaves_no_partial_file(tree, tmp_path, tiny_weights, monkeypatch):
    import cmddcli.photo.io as pio

    real = pio.Image.Image.save

    def interrupted_save(self, fp, *a, **k):
        real(self, fp, *a, **k)  # the temp file is fully written ...
        raise KeyboardInterrupt  # ... and then the user presses Ctrl-C

    monkeypatch.setattr(pio.Image.Image, "save", interrupted_save)
    out = tmp_path / "out"
    r = run([tree, "-o", out], tiny_weights)
    assert r.exit_code == 130
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_quiet_prints_failures_only(tmp_path, tiny_weights):
    src = tmp_path / "in"
    src.mkdir()
    (src / "zero.png").write_bytes(b"")
    Image.fromarray(img()).save(src / "ok.png")
    r = run([src, "-o", tmp_path / "out", "-q"], tiny_weights)
    assert r.exit_code == 1 and r.stdout == ""
    assert "zero.png" in r.stderr and "cmdd deblur" not in r.stderr


# ------------------------------------------------------------------------------------ batch functions


def test_discover_exclude_hidden_and_dedupe(tree, tmp_path):
    out = tree / "results"
    out.mkdir()
    Image.fromarray(img()).save(out / "old_output.png")
    (tree / ".hidden").mkdir()
    Image.fromarray(img()).save(tree / ".hidden" / "x.png")
    pairs = discover([tree, tree / "a.jpg", str(tree / "**" / "*.png")], recursive=True, exclude=out)
    names = [f.name for f, _ in pairs]
    assert sorted(names) == ["a.jpg", "b.png", "c.tif", "d.png"]


def test_plan_is_pure_and_shards_cover_everything(tree, tmp_path):
    opts = BatchOptions(out_dir=tmp_path / "o")
    jobs = plan(discover([tree], recursive=True), opts)
    for world in (1, 2, 3, 5):
        shares = [shard(jobs, r, world) for r in range(world)]
        flat = [j.input for s in shares for j in s]
        assert sorted(flat) == sorted(j.input for j in jobs) and len(flat) == len(set(flat))
        assert shares[0][0] == jobs[0] and (world == 1 or shares[1][0] == jobs[1])  # file i -> rank i % world


def test_merge_reports():
    def rep(rank, names, status="done"):
        files = [dict(input=n, output=n + ".out", status=status, reason="", seconds=1.0, width=1, height=1, rank=rank)
                 for n in names]
        return {"files": files, "settings": {"engine": {"device": f"rank{rank}"}}, "world_size": 2}

    merged = merge_reports([rep(0, ["/a", "/c"]), rep(1, ["/b", "/d"], "failed")])
    assert [r.input for r in merged.results] == ["/a", "/b", "/c", "/d"]
    assert merged.counts()["done"] == 2 and merged.counts()["failed"] == 2 and merged.world_size == 2
    with pytest.raises(CmddError, match="handled by ranks"):
        merge_reports([rep(0, ["/a"]), rep(1, ["/a"])])


def test_dist_info_from_env():
    assert DistInfo.from_env({}) == DistInfo()
    info = DistInfo.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert info.distributed and info.rank == 3 and info.local_rank == 1 and info.local_world_size == 2
    with pytest.raises(CmddError):
        DistInfo.from_env({"WORLD_SIZE": "2", "RANK": "2"})


def test_run_jobs_builds_engine_lazily(tmp_path):
    calls = []
    opts = BatchOptions(out_dir=tmp_path, dry_run=True)
    Image.fromarray(img()).save(tmp_path / "x.png")
    res = batch.run_jobs([Job(tmp_path / "x.png", tmp_path / "y.png")], lambda: calls.append(1), opts)
    assert res[0].status == "planned" and calls == []
    # Files that cannot even be opened fail without the network being built (and in a dry run).
    (tmp_path / "zero.png").write_bytes(b"")
    for dry in (True, False):
        res = batch.run_jobs([Job(tmp_path / "nope.png", tmp_path / "a.png"), Job(tmp_path / "zero.png", tmp_path / "b.png")],
                             lambda: calls.append(1), BatchOptions(out_dir=tmp_path, dry_run=dry))
        assert [(r.status, r.reason) for r in res] == [("failed", "file not found"), ("failed", "empty file (0 bytes)")]
    assert calls == []


@pytest.mark.slow
def test_torchrun_two_ranks_split_and_merge(tmp_path, tiny_weights):
    """A real 2-process run on CPU: gloo group, files split by rank, one merged summary."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        Image.fromarray(img(16, 16, seed=i)).save(src / f"im{i}.png")
    (src / "broken.png").write_bytes(b"")
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = ["torchrun", "--nproc-per-node", "2", "--master-port", str(29500 + os.getpid() % 1000),
           "-m", "cmddcli.cli.main", "deblur", str(src), "-o", str(out), "--weights", str(tiny_weights),
           "--device", "cpu", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode != 0  # broken.png failed on some rank -> non-zero exit
    payload = json.loads(p.stdout[p.stdout.index("{"):])  # rank 0 prints the merged JSON
    assert payload["world_size"] == 2
    ranks = {Path(f["input"]).name: f["rank"] for f in payload["files"]}
    names = sorted(ranks)
    assert names == ["broken.png"] + [f"im{i}.png" for i in range(5)]
    assert all(ranks[n] == i % 2 for i, n in enumerate(names))  # file i -> rank i % 2
    assert payload["counts"]["done"] == 5 and payload["counts"]["failed"] == 1
    assert sorted(p.name for p in out.glob("*.png")) == [f"im{i}.png" for i in range(5)]


def test_an_input_folder_without_images_is_named_among_others(tmp_path, tiny_weights):
    """A folder (or glob) among several inputs that holds no image is not dropped silently."""
    Image.fromarray(img()).save(tmp_path / "a.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "nested" / "sub").mkdir(parents=True)
    Image.fromarray(img()).save(tmp_path / "nested" / "sub" / "b.png")
    r = run([tmp_path / "a.png", tmp_path / "empty", tmp_path / "nested", str(tmp_path / "*.jpg"),
             "-o", tmp_path / "out", "--dry-run"], tiny_weights)
    assert r.exit_code == 0, r.stderr
    err = " ".join(r.stderr.split())
    assert "empty: no images found; skipped" in err and "*.jpg: no images found; skipped" in err
    assert "nested: no images found; skipped (use --recursive for sub-folders)" in err
    r = run([tmp_path / "a.png", tmp_path / "nested", "-o", tmp_path / "out", "--dry-run", "-r"], tiny_weights)
    assert r.exit_code == 0 and "no images found" not in r.stderr


def test_interrupted_batch_keeps_finished_outputs_writes_a_summary_and_resumes(tmp_path):
    """Ctrl-C (SIGTERM is turned into it by the CLI) in the second file: the first output is complete
    and recorded, nothing of the second is left, the summary says what was finished, a rerun resumes."""
    from cmddcli.engine import runner as batch

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(img(seed=i)).save(src / f"p{i}.png")

    class Engine:
        calls = 0

        def restore(self, rgb, progress=None):
            Engine.calls += 1
            if Engine.calls == 2:
                raise KeyboardInterrupt
            return rgb

    out = tmp_path / "out"
    opts = batch.BatchOptions(out_dir=out)
    with pytest.raises(batch.BatchInterrupted) as ei:
        batch.run_batch([src], opts, Engine)
    assert ei.value.left == 2 and [r.status for r in ei.value.results] == ["done"]
    assert sorted(p.name for p in out.iterdir()) == [".cmdd", "p0.png"]
    summary = json.loads((out / ".cmdd" / "summary.json").read_text())
    assert summary["counts"]["done"] == 1 and summary["settings"]["interrupted"] == {"files_left": 2}
    report = batch.run_batch([src], opts, Engine)
    assert [r.status for r in report.results] == ["skipped", "done", "done"]


def test_sigterm_ends_a_deblur_batch_with_a_message_and_exit_143(tmp_path, tiny_weights):
    import signal
    import sys
    import time

    src = tmp_path / "in"
    src.mkdir()
    for i in range(40):
        Image.fromarray(img(seed=i)).save(src / f"p{i:02d}.png")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "cmddcli", "deblur", str(src), "-o", str(out), "--weights",
                             str(tiny_weights)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.is_dir() and any(p.suffix == ".png" for p in out.iterdir())):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the batch finished before the signal arrived")
    assert proc.returncode == 143 and "interrupted" in err and "run the same command again" in err
    assert "Traceback" not in err
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".cmdd"]  # no temp files


@pytest.mark.parametrize("opt", [["--precision", "fp8"], ["--device", "gpu"], ["--weights", "v9"]])
def test_bad_engine_settings_fail_before_the_output_folder_is_made(tmp_path, opt):
    Image.fromarray(img()).save(tmp_path / "a.png")
    r = run([tmp_path / "a.png", "-o", tmp_path / "out", *opt])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error:")
    assert not (tmp_path / "out").exists()


def test_outputs_of_an_earlier_run_inside_the_tree_are_not_inputs(tmp_path, tiny_weights):
    """Two strength variants in sub-folders of the shoot: the second run does not deblur the first's
    outputs again; a file named on its own still is an input."""
    shoot = tmp_path / "shoot"
    (shoot / "day").mkdir(parents=True)
    Image.fromarray(img()).save(shoot / "a.png")
    Image.fromarray(img(seed=1)).save(shoot / "day" / "b.png")
    assert run([shoot, "-r", "-o", shoot / "v1"], tiny_weights).exit_code == 0
    r = run([shoot, "-r", "-o", shoot / "v2", "--dry-run", "--json"], tiny_weights)
    planned = sorted(Path(f["input"]).relative_to(shoot).as_posix() for f in json.loads(r.stdout)["files"])
    assert planned == ["a.png", "day/b.png"]
    r = run([shoot / "v1" / "a.png", "-o", tmp_path / "again", "--dry-run", "--json"], tiny_weights)
    assert json.loads(r.stdout)["counts"]["planned"] == 1


def test_folder_walk_names_unreadable_folders_and_other_image_kinds(tmp_path, monkeypatch, caplog):
    """Nothing is left out silently: a sub-folder that cannot be listed is a warning, and image files
    a folder walk does not pick up (GIF, BMP, ...) are counted in one info line."""
    import logging

    from cmddcli.engine import inputs

    (tmp_path / "locked").mkdir()
    Image.fromarray(img()).save(tmp_path / "a.png")
    Image.fromarray(img()).save(tmp_path / "b.gif")
    Image.fromarray(img()).save(tmp_path / "locked" / "c.png")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.INFO, logger="cmddcli"):
        found = inputs._walk(tmp_path, recursive=True, exclude=None)
    assert [f.name for f in found] == ["a.png"]
    text = caplog.text
    assert "locked: cannot be read (Permission denied); skipped" in text and "1 .gif not picked up" in text


def test_glob_extensions_match_in_any_case(tmp_path):
    from cmddcli.engine.runner import discover

    for name in ("a.DNG", "b.dng", "c.Dng", "d.jpg"):
        (tmp_path / name).write_bytes(b"x")
    for pattern in ("*.DNG", "*.dng"):
        found = sorted(f.name for f, _ in discover([str(tmp_path / pattern)], warn=False))
        assert found == ["a.DNG", "b.dng", "c.Dng"], pattern
    assert [f.name for f, _ in discover([str(tmp_path / "[ab].*")], warn=False)] == ["a.DNG", "b.dng"]
