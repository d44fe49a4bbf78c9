"""`cmdd prepare dpdd | realdof | pairs`: discovery, windows, crops, flips, filter, manifest, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cmddcli.cli.main import app
from cmddcli.data.crops import keep_sharpest, sharpness_scores, sobel_kernels, stride_for, window_grid, window_starts
from cmddcli.data.discovery import DPDD_INDOOR_TEST, discover_dpdd, natural_key
from cmddcli.data.manifest import load_manifest, sha256_file
from cmddcli.photo.arrays import png_header, read_image, write_png
from cmddcli.data.prepare import prepare_dpdd, prepare_pairs, prepare_realdof
from cmddcli.errors import InputError

H, W = 48, 64  # tiny DPDD-shaped images
WIN = 32  # window 32, overlap 0.6 -> stride 12; y: 0 12 16, x: 0 12 24 32 -> 12 windows


def _img(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (h, w, 3)).astype(np.uint16)


def make_dpdd(root: Path, counts=None, size=(H, W), dual=True) -> Path:
    """dd_dp_dataset_canon/{split}_{c,l,r}/{source,target}/*.png with random 16-bit images."""
    counts = counts or {"train": 2, "val": 1, "test": 3}
    canon = root / "dd_dp_dataset_canon"
    seed = 0
    for split, n in counts.items():
        for i in range(n):
            name = f"{split}{i}.png"
            for view, folders in (("c", ("source", "target")), ("l", ("source",)), ("r", ("source",))):
                if view != "c" and not dual:
                    continue
                for f in folders:
                    seed += 1
                    write_png(canon / f"{split}_{view}" / f / name, _img(seed, *size))
    return canon


# ---- window geometry and the sharpness filter


def test_paper_windows():
    assert stride_for(512, 0.6) == 204
    assert window_starts(1680, 512, 204) == [0, 204, 408, 612, 816, 1020, 1168]
    assert window_starts(1120, 512, 204) == [0, 204, 408, 608]
    assert len(window_grid(1120, 1680, 512, 204)) == 28
    assert window_starts(64, 32, stride_for(32, 0.6)) == [0, 12, 24, 32]
    assert window_starts(48, 32, 12) == [0, 12, 16]
    assert window_starts(512, 512, 204) == [0]
    with pytest.raises(ValueError):
        window_starts(30, 32, 12)


def test_sobel_kernels_match_opencv():
    s, d = sobel_kernels(3)
    np.testing.assert_array_equal(s, [1, 2, 1])
    np.testing.assert_array_equal(d, [-1, 0, 1])
    s, d = sobel_kernels(5)
    np.testing.assert_array_equal(s, [1, 4, 6, 4, 1])
    np.testing.assert_array_equal(d, [-1, -2, 0, 2, 1])


def test_least_sharp_patches_are_dropped():
    rng = np.random.default_rng(0)
    patches = rng.random((10, 32, 32, 3))
    patches[3] = 0.5  # flat: least sharp
    patches[7] = patches[7] * 0.1 + 0.45  # low contrast: second least sharp
    scores = sharpness_scores(patches)
    assert scores.argmin() == 3
    assert keep_sharpest(scores, 0.3) == [i for i in range(10) if i not in (3, 7) and i != int(np.argsort(scores)[2])]
    assert keep_sharpest(scores, 0.0) == list(range(10))


# ---- discovery


def test_natural_sort():
    assert sorted(["img10", "img2", "img1"], key=natural_key) == ["img1", "img2", "img10"]


def test_discovery_from_canon_folder_or_parent(tmp_path):
    canon = make_dpdd(tmp_path)
    for root in (tmp_path, canon):
        d = discover_dpdd(root)
        assert d.layout == "canon" and not d.problems
        assert {s: len(p) for s, p in d.pairs.items()} == {"train": 2, "val": 1, "test": 3}
        assert set(d.pairs["test"][0].extra) == {"left", "right"}


def test_restormer_layout(tmp_path):
    ds = tmp_path / "Datasets"
    for split, n, views in (("train", 2, ("inputC", "target")), ("test", 2, ("inputC", "inputL", "inputR", "target"))):
        for i in range(n):
            for v in views:
                write_png(ds / split / "DPDD" / v / f"{i}.png", _img(i, 40, 40))
    d = discover_dpdd(tmp_path, splits=("train", "test"))
    assert d.layout == "restormer" and not d.problems
    assert len(d.pairs["train"]) == 2 and d.pairs["train"][0].extra == {}
    assert set(d.pairs["test"][0].extra) == {"left", "right"}
    r = prepare_dpdd(tmp_path, tmp_path / "out", splits=("train", "test"), window=32, flips=(), workers=1)
    assert r.counts == {"train": 2 * 4, "test": 2}


def test_missing_target_is_reported(tmp_path):
    canon = make_dpdd(tmp_path)
    (canon / "train_c" / "target" / "train1.png").unlink()
    with pytest.raises(InputError, match=r"train1\.png: no matching target"):
        prepare_dpdd(tmp_path, tmp_path / "out", window=WIN)


def test_size_mismatch_is_reported(tmp_path):
    canon = make_dpdd(tmp_path)
    write_png(canon / "val_c" / "target" / "val0.png", _img(9, H, W - 2))
    with pytest.raises(InputError, match=r"val0\.png: target is 62x48 but the source is 64x48"):
        prepare_dpdd(tmp_path, tmp_path / "out", window=WIN)


def test_missing_split_names_the_fix(tmp_path):
    make_dpdd(tmp_path, counts={"test": 2})
    with pytest.raises(InputError, match="split 'train' not found.*--splits"):
        prepare_dpdd(tmp_path, tmp_path / "out", window=WIN)
    r = prepare_dpdd(tmp_path, tmp_path / "out", splits=("test",), window=WIN)
    assert r.counts == {"test": 2}


# ---- crops and manifest


def test_crops_positions_flips_manifest(tmp_path):
    make_dpdd(tmp_path)
    out = tmp_path / "out"
    r = prepare_dpdd(tmp_path, out, window=WIN, overlap_fraction=0.6, workers=1)
    assert r.counts == {"train": 2 * 12 * 3, "val": 12, "test": 3}
    m = load_manifest(out)
    assert m.dataset == "dpdd" and m.params["train"]["stride"] == 12
    train = m.pairs("train")
    assert {p.name.rsplit("_", 1)[-1] for p in train} >= {"h", "v"}
    by_name = {e.name: e for e in m.entries}
    full_src = read_image(tmp_path / "dd_dp_dataset_canon/train_c/source/train1.png")
    full_tgt = read_image(tmp_path / "dd_dp_dataset_canon/train_c/target/train1.png")
    # every window of train1, in every flip, equals the flipped slice of the full image
    for p in train:
        e = by_name[p.name]
        if e.origin != "train1":
            continue
        y, x, h, w = e.window
        ref_s, ref_t = full_src[y:y + h, x:x + w], full_tgt[y:y + h, x:x + w]
        if e.flip == "h":
            ref_s, ref_t = ref_s[:, ::-1], ref_t[:, ::-1]
        elif e.flip == "v":
            ref_s, ref_t = ref_s[::-1], ref_t[::-1]
        np.testing.assert_array_equal(read_image(p.source), ref_s)
        np.testing.assert_array_equal(read_image(p.target), ref_t)
        assert png_header(p.source)[2] == 16 and p.bit_depth == 16
    windows = {tuple(by_name[p.name].window[:2]) for p in train if by_name[p.name].origin == "train1"}
    assert windows == {(y, x) for y in (0, 12, 16) for x in (0, 12, 24, 32)}  # last windows flush with the border
    # val: same windows, no flips; test: full images, not copied
    assert all(by_name[p.name].flip is None for p in m.pairs("val"))
    test = m.pairs("test")
    assert [p.name for p in test] == ["test0", "test1", "test2"]
    assert test[0].source.resolve() == (tmp_path / "dd_dp_dataset_canon/test_c/source/test0.png").resolve()
    assert (test[0].width, test[0].height, test[0].bit_depth) == (W, H, 16)
    assert set(test[0].extra) == {"left", "right"}
    # checksums are the files' sha256 and the JSON stores relative paths
    for p in m.pairs()[:5] + test:
        assert p.sha256_source == sha256_file(p.source) and p.sha256_target == sha256_file(p.target)
    raw = json.loads((out / "manifest.json").read_text())
    assert not any(Path(e["source"]).is_absolute() for e in raw["pairs"])
    assert m.verify() == []


def test_drop_blurry_keeps_the_sharp_windows(tmp_path):
    canon = make_dpdd(tmp_path, counts={"train": 1}, dual=False)
    tgt = read_image(canon / "train_c/target/train0.png")
    tgt[:, :20] = 30000  # flat left band: the windows starting at x = 0 and 12 are the least sharp
    write_png(canon / "train_c/target/train0.png", tgt)
    r = prepare_dpdd(tmp_path, tmp_path / "out", splits=("train",), window=WIN, flips=(), drop_blurry=0.3)
    m = load_manifest(tmp_path / "out")
    assert r.counts["train"] == 12 - int(0.3 * 12)
    kept = {tuple(e.window[:2]) for e in m.entries}
    assert not any(x == 0 for _, x in kept)  # the flattest column of windows went first


def test_test_subsets_follow_spec(tmp_path):
    make_dpdd(tmp_path, counts={"test": 76}, size=(4, 4), dual=False)
    r = prepare_dpdd(tmp_path, tmp_path / "out", splits=("test",))
    m = load_manifest(r.manifest_path)
    tests = m.pairs("test")
    assert [p.name for p in tests] == [f"test{i}" for i in range(76)]  # natural order, not test1, test10, ...
    indoor = [i for i, p in enumerate(tests) if p.subset == "indoor"]
    assert indoor == sorted(DPDD_INDOOR_TEST) and len(indoor) == 37
    assert len(m.pairs("test", subset="outdoor")) == 39


def test_resume_writes_only_missing_crops(tmp_path):
    make_dpdd(tmp_path, counts={"train": 2}, dual=False)
    out = tmp_path / "out"
    r1 = prepare_dpdd(tmp_path, out, splits=("train",), window=WIN)
    assert r1.written == 2 * 12 * 3 * 2 and r1.kept == 0
    files = sorted((out / "train").rglob("*.png"))
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    r2 = prepare_dpdd(tmp_path, out, splits=("train",), window=WIN)
    assert r2.written == 0 and r2.kept == r1.written
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes
    victim = files[5]
    victim.unlink()
    r3 = prepare_dpdd(tmp_path, out, splits=("train",), window=WIN)
    assert r3.written == 1
    assert victim.exists()
    assert {f: f.stat().st_mtime_ns for f in files if f != victim} == {f: m for f, m in mtimes.items() if f != victim}
    assert load_manifest(out).verify() == []
    assert not list(out.rglob("*.tmp"))


def test_worker_pool_gives_the_same_manifest(tmp_path):
    make_dpdd(tmp_path, counts={"train": 2, "test": 2}, dual=False)
    a = prepare_dpdd(tmp_path, tmp_path / "a", splits=("train", "test"), window=WIN, drop_blurry=0.3, workers=1)
    b = prepare_dpdd(tmp_path, tmp_path / "b", splits=("train", "test"), window=WIN, drop_blurry=0.3, workers=2)
    ea, eb = load_manifest(a.manifest_path).entries, load_manifest(b.manifest_path).entries
    def key(entries):
        return [(e.name, e.sha256_source, e.sha256_target) for e in entries]

    assert key(ea) == key(eb)


# ---- RealDOF and generic pairs


def test_realdof_and_pairs(tmp_path):
    for i in range(3):
        write_png(tmp_path / "RealDOF/source" / f"r{i}.png", _img(i, 20, 30))
        write_png(tmp_path / "RealDOF/target" / f"r{i}.png", _img(i + 10, 20, 30))
    r = prepare_realdof(tmp_path, tmp_path / "out_rd")
    m = load_manifest(r.manifest_path)
    assert m.dataset == "realdof" and m.counts() == {"test": 3}
    assert m.pairs()[0].width == 30 and m.pairs()[0].height == 20
    # generic folder: matched by stem, across file types
    g = tmp_path / "mine"
    write_png(g / "source/a.png", _img(1, 40, 40))
    write_png(g / "target/a.png", _img(2, 40, 40))
    from PIL import Image

    Image.fromarray((_img(3, 40, 40) >> 8).astype(np.uint8)).save(g / "source/b.jpg")
    Image.fromarray((_img(4, 40, 40) >> 8).astype(np.uint8)).save(g / "target/b.png")
    r = prepare_pairs(g, tmp_path / "out_p", split="val")
    assert load_manifest(r.manifest_path).counts() == {"val": 2}
    r = prepare_pairs(g, tmp_path / "out_pc", split="train", crop=True, window=32, flips=("h",))
    assert r.counts == {"train": 2 * 4 * 2}
    (g / "target/b.png").unlink()
    with pytest.raises(InputError, match=r"b\.jpg: no matching target"):
        prepare_pairs(g, tmp_path / "out_p")


def test_load_manifest_errors(tmp_path):
    with pytest.raises(InputError, match="manifest not found"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable JSON"):
        load_manifest(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text('{"pairs": []}')
    with pytest.raises(InputError, match="not a cmdd manifest"):
        load_manifest(tmp_path)


# ---- CLI


def test_cli_prepare_dpdd(tmp_path):
    make_dpdd(tmp_path, counts={"train": 1, "val": 1, "test": 1}, dual=False)
    runner = CliRunner()
    res = runner.invoke(app, ["prepare", "dpdd", str(tmp_path), "-o", str(tmp_path / "out"), "--window", "32",
                              "--flips", "h", "--workers", "1", "--json", "-q"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["counts"] == {"train": 12 * 2, "val": 12, "test": 1}
    assert load_manifest(payload["manifest"]).dataset == "dpdd"
    res = runner.invoke(app, ["prepare", "dpdd", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o2")])
    assert res.exit_code == 1 and "not a folder" in " ".join(res.output.split())
    res = runner.invoke(app, ["prepare", "dpdd", str(tmp_path), "-o", str(tmp_path / "o3"), "--flips", "x"])
    assert res.exit_code == 1 and "unknown flip" in " ".join(res.output.split())


def test_cli_prepare_realdof_and_pairs(tmp_path):
    write_png(tmp_path / "RealDOF/source/a.png", _img(1, 8, 8))
    write_png(tmp_path / "RealDOF/target/a.png", _img(2, 8, 8))
    runner = CliRunner()
    res = runner.invoke(app, ["prepare", "realdof", str(tmp_path / "RealDOF"), "-o", str(tmp_path / "o"),
                              "-q", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["counts"] == {"test": 1}
    res = runner.invoke(app, ["prepare", "pairs", str(tmp_path / "RealDOF"), "-o", str(tmp_path / "p"), "-q"])
    assert res.exit_code == 0, res.output
    assert load_manifest(tmp_path / "p").counts() == {"test": 1}
