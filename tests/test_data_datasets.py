"""PairsDataset / SynthDataset, the sharp-source filter, and `cmdd prepare synth`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cmddcli.cli.main import app
from cmddcli.data.datasets import PairsDataset, SynthDataset
from cmddcli.data.manifest import load_manifest
from cmddcli.photo.arrays import read_image, to_float, write_png
from cmddcli.data.prepare import prepare_dpdd, prepare_synth
from cmddcli.data.sources import SharpnessFilter, list_images, sharp_tiles
from cmddcli.data.synth import SynthConfig, disk_kernel
from cmddcli.errors import InputError

from test_data_dpdd import make_dpdd


def _sharp_texture(h: int, w: int, seed: int) -> np.ndarray:
    """A sharp 8-bit 'photo': 8 px blocks plus per-pixel detail."""
    rng = np.random.default_rng(seed)
    blocks = np.repeat(np.repeat(rng.random((h // 8 + 1, w // 8 + 1, 3)), 8, 0), 8, 1)[:h, :w]
    return np.round(255 * (0.6 * blocks + 0.4 * rng.random((h, w, 3)))).astype(np.uint8)


def _blurred(img: np.ndarray, radius: float) -> np.ndarray:
    import torch.nn.functional as F

    k = torch.from_numpy(disk_kernel(radius))[None, None].repeat(3, 1, 1, 1)
    x = torch.from_numpy(img.astype(np.float32).transpose(2, 0, 1))[None]
    p = k.shape[-1] // 2
    y = F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), k, groups=3)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).numpy().astype(np.uint8)


@pytest.fixture
def sharp_dir(tmp_path):
    d = tmp_path / "sharp"
    for i in range(3):
        write_png(d / f"photo{i}.png", _sharp_texture(128, 160, i))
    write_png(d / "bokeh.png", _blurred(_sharp_texture(128, 160, 9), 4.0))  # deliberately blurred
    write_png(d / "_pkg" / "ignored.png", _sharp_texture(64, 64, 5))  # unpacked packages are skipped
    return d


# ---- PairsDataset


def test_pairs_dataset_patches_and_full_images(tmp_path):
    make_dpdd(tmp_path, counts={"train": 1, "test": 2}, dual=False)
    r = prepare_dpdd(tmp_path, tmp_path / "out", splits=("train", "test"), window=32, flips=())
    ds = PairsDataset(r.manifest_path, "train", patch_size=16, flips=False, seed=3)
    assert len(ds) == 12
    blurred, sharp = ds[5]
    assert blurred.shape == (3, 16, 16) and blurred.dtype == torch.float32
    assert torch.equal(ds[5][0], blurred)  # same index, same epoch: same crop
    # the patch is a slice of the crop, identical in source and target (16-bit -> float exactly)
    pair = ds.pairs[5]
    src, tgt = to_float(read_image(pair.source)), to_float(read_image(pair.target))
    hits = [(y, x) for y in range(17) for x in range(17)
            if np.array_equal(src[y:y + 16, x:x + 16].transpose(2, 0, 1), blurred.numpy())]
    assert len(hits) == 1
    y, x = hits[0]
    np.testing.assert_array_equal(tgt[y:y + 16, x:x + 16].transpose(2, 0, 1), sharp.numpy())
    ds.set_epoch(1)
    assert not torch.equal(ds[5][0], blurred)
    full = PairsDataset(tmp_path / "out", "test", patch_size=None)
    b, s = full[0]
    assert b.shape == (3, 48, 64) and 0.0 <= float(b.min()) and float(b.max()) <= 1.0
    with pytest.raises(InputError, match="no pairs"):
        PairsDataset(tmp_path / "out", "val")


# ---- sharp sources


def test_sharp_tile_filter_rejects_blurred_photos(sharp_dir):
    files = list_images(sharp_dir)
    assert [f.name for f in files] == ["bokeh.png", "photo0.png", "photo1.png", "photo2.png"]
    sharp = to_float(read_image(sharp_dir / "photo0.png"))
    blurred = to_float(read_image(sharp_dir / "bokeh.png"))
    assert len(sharp_tiles(sharp, 64)) == 3 * 4
    assert sharp_tiles(blurred, 64) == []
    half = sharp.copy()
    half[:, :96] = blurred[:, :96]  # left part blurred: only tiles at least half on the right survive
    assert {t.x for t in sharp_tiles(half, 64, filt=SharpnessFilter(min_fraction=0.5))} == {64, 96}
    assert {t.x for t in sharp_tiles(half, 64)} == {96}  # default: 70 % of the blocks must be sharp
    flat = np.full((128, 128, 3), 0.5, np.float32)
    assert sharp_tiles(flat, 64, filt=SharpnessFilter(threshold=0.0, min_ratio=0.0)) != []
    assert sharp_tiles(flat, 64) == []


# ---- SynthDataset


def test_synth_dataset_is_seeded_per_index(sharp_dir):
    files = list_images(sharp_dir)
    cfg = SynthConfig(max_coc=(2.0, 6.0))
    ds = SynthDataset(files, patch_size=48, config=cfg, seed=11, length=6)
    b, s = ds[2]
    assert b.shape == s.shape == (3, 48, 48) and b.dtype == torch.float32
    assert 0.0 <= float(b.min()) and float(b.max()) <= 1.0
    again = SynthDataset(files, patch_size=48, config=cfg, seed=11, length=6)
    assert torch.equal(again[2][0], b) and torch.equal(again[2][1], s)
    assert not torch.equal(ds[3][1], s)
    ds.set_epoch(1)
    assert not torch.equal(ds[2][1], s)
    # arrays work as sources too, and a patch larger than the source is an InputError
    arr = to_float(read_image(files[1]))
    assert SynthDataset([arr], patch_size=32, config=cfg)[0][0].shape == (3, 32, 32)
    with pytest.raises(InputError, match="smaller than"):
        SynthDataset([arr], patch_size=256)[0]


def test_synth_dataset_worker_count_does_not_change_batches(sharp_dir):
    files = list_images(sharp_dir)
    ds = SynthDataset(files, patch_size=32, config=SynthConfig(max_coc=(1.0, 4.0)), seed=5, length=4)
    serial = [b for b, _ in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=0)]
    parallel = [b for b, _ in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))


# ---- prepare synth


def test_prepare_synth_is_reproducible_and_resumable(sharp_dir, tmp_path):
    cfg = SynthConfig(max_coc=(1.0, 5.0), noise_prob=0.5, jpeg_prob=0.5)
    a = prepare_synth(sharp_dir, tmp_path / "a", count=6, patch=64, seed=4, val_fraction=0.34, config=cfg)
    assert a.counts == {"train": 4, "val": 2}
    assert any("no sharp" in n for n in a.notes)  # bokeh.png is not used
    ma = load_manifest(a.manifest_path)
    assert ma.dataset == "synth" and ma.params["images"]["val"] and "bokeh.png" not in str(ma.params["images"])
    assert not set(ma.params["images"]["val"]) & set(ma.params["images"]["train"])
    p = ma.pairs("train")[0]
    assert read_image(p.source).shape == (64, 64, 3) and "depth" in p.extra
    assert read_image(p.extra["depth"], channels=0).dtype == np.uint16
    b = prepare_synth(sharp_dir, tmp_path / "b", count=6, patch=64, seed=4, val_fraction=0.34, config=cfg)
    mb = load_manifest(b.manifest_path)
    digests = [(e.sha256_source, e.sha256_target) for e in ma.entries]
    assert digests == [(e.sha256_source, e.sha256_target) for e in mb.entries]
    again = prepare_synth(sharp_dir, tmp_path / "a", count=6, patch=64, seed=4, val_fraction=0.34, config=cfg)
    assert again.written == 0 and again.kept == 6 * 3
    c = prepare_synth(sharp_dir, tmp_path / "c", count=6, patch=64, seed=5, val_fraction=0.34, config=cfg)
    mc = load_manifest(c.manifest_path)
    assert [e.sha256_source for e in mc.entries] != [e.sha256_source for e in ma.entries]
    # The folder of seed 4 reused with seed 5 (or other settings): no pair of the earlier plan is kept
    # under the new labels, the bytes are those of a fresh run, and no earlier file is left behind.
    d = prepare_synth(sharp_dir, tmp_path / "a", count=6, patch=64, seed=5, val_fraction=0.34, config=cfg)
    md = load_manifest(d.manifest_path)
    assert [(e.name, e.split, e.origin, e.sha256_source) for e in md.entries] == [
        (e.name, e.split, e.origin, e.sha256_source) for e in mc.entries]
    on_disk = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").glob("*/*/*.png"))
    listed = sorted(x for e in md.entries for x in (e.source, e.target, e.extra["depth"]))
    assert on_disk == listed


def test_prepare_synth_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        prepare_synth(tmp_path / "empty", tmp_path / "o", count=2, patch=64)
    write_png(tmp_path / "blurry" / "b.png", _blurred(_sharp_texture(96, 96, 1), 5.0))
    with pytest.raises(InputError, match="no image has a sharp"):
        prepare_synth(tmp_path / "blurry", tmp_path / "o", count=2, patch=64)


def test_cli_prepare_synth(sharp_dir, tmp_path):
    res = CliRunner().invoke(app, ["prepare", "synth", str(sharp_dir), "-o", str(tmp_path / "out"), "-n", "3",
                                   "--size", "64", "--seed", "1", "--max-coc", "1,4", "--bits", "16",
                                   "--workers", "1", "--json", "-q"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert sum(payload["counts"].values()) == 3
    m = load_manifest(payload["manifest"])
    assert m.pairs()[0].bit_depth == 16
    res = CliRunner().invoke(app, ["prepare", "synth", str(sharp_dir), "-o", str(tmp_path / "o2"), "--depth", "cubes"])
    assert res.exit_code == 1 and "--depth" in " ".join(res.output.split())
    for args, text in ((["--max-coc", "5,2"], "LO must not exceed HI"), (["--jpeg-quality", "0,200"], "within 1..100"),
                       (["--size", "100"], "multiple of 32, got 100"), (["--max-coc", "a"], "expected LO,HI"),
                       (["--max-coc", "nan"], "finite"), (["--max-coc", "2,inf"], "finite")):
        res = CliRunner().invoke(app, ["prepare", "synth", str(sharp_dir), "-o", str(tmp_path / "o3"), *args])
        assert res.exit_code == 1 and text in " ".join(res.output.split()), (args, res.output)


def test_cli_prepare_synth_goes_on_past_an_unreadable_photo(sharp_dir, tmp_path):
    """A text file named .jpg among the sharp photos is left out and listed at the end (exit 1); the
    pairs are still made from the others. Once mended it is read (failures are not remembered)."""
    bad = sharp_dir / "text.jpg"
    bad.write_text("not a photo")
    out = tmp_path / "out"
    args = ["prepare", "synth", str(sharp_dir), "-o", str(out), "-n", "3", "--size", "64", "--workers", "1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and (out / "manifest.json").is_file(), res.output
    text = " ".join(res.output.split())
    assert "failed:" in text and "text.jpg" in text and "1 file(s) could not be used" in text
    payload = json.loads(CliRunner().invoke(app, [*args, "--json", "-q"]).stdout)
    assert [f["path"].rsplit("/", 1)[-1] for f in payload["failed"]] == ["text.jpg"] and sum(payload["counts"].values()) == 3
    bad.unlink()
    write_png(sharp_dir / "text.png", _sharp_texture(128, 160, 7))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output


def test_cli_prepare_synth_output_that_is_a_file(sharp_dir, tmp_path):
    (tmp_path / "afile").write_text("x")
    res = CliRunner().invoke(app, ["prepare", "synth", str(sharp_dir), "-o", str(tmp_path / "afile"), "-n", "2",
                                   "--size", "64"])
    assert res.exit_code == 1 and "-o must be a folder" in res.output and "Traceback" not in res.output
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("shape", [(1, 1), (1, 2000), (2000, 1), (31, 400)])
def test_sharp_tiles_of_strips_and_icons_are_none(shape):
    """An image without one whole 32-px block at both scales has no sharp blocks (it used to end
    `cmdd prepare synth` with a numpy error on a 1-px-wide photo)."""
    from cmddcli.data.sources import block_sharpness, sharp_tiles

    img = np.random.default_rng(0).random((*shape, 3)).astype(np.float32)
    fine, ratio = block_sharpness(img)
    assert fine.size == 0 and ratio.size == 0
    assert sharp_tiles(img, 32) == []
    fine, _ = block_sharpness(np.random.default_rng(1).random((40, 400, 3)).astype(np.float32))
    assert fine.shape == (1, 12)  # one whole row of blocks is scored as before
