"""What `cmdd deblur` keeps and what it refuses, each case built from a generated file.

Colour-key transparency, premultiplied alpha, float range, multi-page TIFF, camera metadata from RAW,
strict JSON from `cmdd eval`, a full disk, decompression bombs, resume records, and the smaller items
(--raw-half-size on LinearRaw DNG, the CMYK warning, symlinked folders).
"""

import errno
import io
import json
import logging
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from cmddcli.engine import runner as batch
from cmddcli.cli.main import app
from cmddcli.errors import CmddError, InputError
from cmddcli.photo import RawSettings, meta, png, read_photo, write_photo

pyexiv2 = pytest.importorskip("pyexiv2")

SAMPLES = Path("/work/shared/samples")
if not SAMPLES.is_dir():
    SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
needs_samples = pytest.mark.skipif(not (SAMPLES / "raw").is_dir(), reason="shared/samples not present")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    import cmddcli.runtime as D

    monkeypatch.setattr(D, "available_cores", lambda: 1)


def deblur(args, weights=None):
    full = ["deblur", *map(str, args)] + (["--weights", str(weights)] if weights else [])
    return CliRunner().invoke(app, full, catch_exceptions=False)


def strict_json(text: str):
    """json.loads that refuses Infinity / NaN (what RFC 8259 parsers do)."""
    def refuse(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(text, parse_constant=refuse)


def exiv2_tags(path) -> dict:
    with pyexiv2.Image(str(path)) as im:
        return im.read_exif()


def png_with_chunk(data: bytes, ctype: bytes, body: bytes) -> bytes:
    """Insert a chunk right before the first IDAT."""
    i = data.index(b"IDAT") - 4
    return data[:i] + png.chunk(ctype, body) + data[i:]


def make_dng(path, h=48, w=64, seed=0, exif=None):
    """A small LinearRaw DNG (3 samples per pixel, 16 bit) that LibRaw develops, plus EXIF via exiv2."""
    rng = np.random.default_rng(seed)
    a = (rng.random((h, w, 3)) * 0.6 * 65535 + 3000).astype(np.uint16)
    tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, "Gen Cam", True),  # UniqueCameraModel
        (271, "s", 0, "GenMake", True),
        (272, "s", 0, "GenModel 1", True),
        (306, "s", 0, "2024:05:06 07:08:09", True),
        (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),  # ColorMatrix1
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1 D65
        (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
        (50717, "H", 1, 65535, True),  # WhiteLevel
    ]
    tifffile.imwrite(path, a, photometric=34892, extratags=tags, subfiletype=0, metadata=None)
    with pyexiv2.Image(str(path)) as im:
        im.modify_exif(exif or {
            "Exif.Photo.ExposureTime": "1/125", "Exif.Photo.FNumber": "28/10", "Exif.Photo.ISOSpeedRatings": "400",
            "Exif.Photo.FocalLength": "50/1", "Exif.Photo.LensModel": "Gen 50mm F2.8",
            "Exif.Photo.DateTimeOriginal": "2024:05:06 07:08:09"})
    return path


CAMERA_KEYS = ("Exif.Image.Make", "Exif.Image.Model", "Exif.Image.DateTime", "Exif.Photo.ExposureTime",
               "Exif.Photo.FNumber", "Exif.Photo.ISOSpeedRatings", "Exif.Photo.FocalLength", "Exif.Photo.LensModel")


# ------------------------------------------------------------------------------------ 1. colour key


def _keyed(kind):
    """(PNG bytes, (H, W) bool mask of keyed pixels) for gray/RGB at 2, 8 and 16 bits."""
    mask = np.zeros((8, 10), bool)
    mask[:, ::2] = True  # half the pixels carry the key
    if kind == "gray8":
        g = np.where(mask, 0, 180).astype(np.uint8)
        b = io.BytesIO()
        Image.fromarray(g, "L").save(b, format="PNG", transparency=0)
        return b.getvalue(), mask
    if kind == "rgb8":
        a = np.full((8, 10, 3), (200, 90, 30), np.uint8)
        a[mask] = (10, 20, 30)
        b = io.BytesIO()
        Image.fromarray(a).save(b, format="PNG", transparency=(10, 20, 30))
        return b.getvalue(), mask
    if kind == "gray16":
        g = np.where(mask, 1234, 50000).astype(np.uint16)
        return png_with_chunk(png.write_png(g), b"tRNS", struct.pack(">H", 1234)), mask
    if kind == "rgb16":
        a = np.full((8, 10, 3), (40000, 3000, 20000), np.uint16)
        a[mask] = (1, 2, 3)
        return png_with_chunk(png.write_png(a), b"tRNS", struct.pack(">3H", 1, 2, 3)), mask
    if kind == "gray2":  # 2-bit gray: Pillow scales the samples but not the key
        vals = np.where(mask, 1, 3).astype(np.uint8)
        rows = b"".join(b"\x00" + np.packbits(np.unpackbits(r[:, None], axis=1)[:, -2:].ravel()).tobytes()
                        for r in vals)
        data = (png.SIGNATURE + png.chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 8, 2, 0, 0, 0, 0))
                + png.chunk(b"tRNS", struct.pack(">H", 1)) + png.chunk(b"IDAT", zlib.compress(rows))
                + png.chunk(b"IEND", b""))
        return data, mask
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["gray8", "rgb8", "gray16", "rgb16", "gray2"])
def test_colour_key_becomes_alpha_in_every_output(tmp_path, kind):
    data, mask = _keyed(kind)
    src = tmp_path / "k.png"
    src.write_bytes(data)
    p = read_photo(src)
    assert p.alpha is not None
    np.testing.assert_array_equal(p.alpha == 0, mask)
    assert p.alpha[~mask].min() == 1.0
    for ext in ("png", "tif", "webp"):
        out = write_photo(tmp_path / f"o.{ext}", p)
        back = read_photo(out)
        assert back.alpha is not None, ext
        np.testing.assert_array_equal(back.alpha < 0.5, mask)


def test_colour_key_cli_writes_alpha(tmp_path, tiny_weights):
    g = np.zeros((16, 16), np.uint8)
    g[:, 8:] = 200  # half the pixels are 0, the key
    Image.fromarray(g, "L").save(tmp_path / "k.png", transparency=0)
    r = deblur([tmp_path / "k.png", "-o", tmp_path / "out", "--json"], tiny_weights)
    assert r.exit_code == 0, r.stderr
    out = np.asarray(Image.open(tmp_path / "out" / "k.png"))
    assert out.shape == (16, 16, 2)  # gray + alpha
    assert (out[:, :8, 1] == 0).all() and (out[:, 8:, 1] == 255).all()


# ------------------------------------------------------------------------------------ 2. premultiplied


@pytest.mark.parametrize("depth", [8, 16])
def test_associated_alpha_is_unpremultiplied_and_composite_kept(tmp_path, depth):
    top = 255 if depth == 8 else 65535
    dt = np.uint8 if depth == 8 else np.uint16
    straight = np.array([200, 120, 40]) / 255.0
    alpha = 100 / 255.0
    a = np.zeros((6, 7, 4), dt)
    a[..., :3] = np.rint(straight * alpha * top).astype(dt)  # 78/47/16 at alpha 100 for 8 bit
    a[..., 3] = np.rint(alpha * top)
    tifffile.imwrite(tmp_path / "pm.tif", a, photometric="rgb", extrasamples=["assocalpha"])
    p = read_photo(tmp_path / "pm.tif")
    assert p.premultiplied
    np.testing.assert_allclose(p.rgb[0, 0], straight, atol=2.5 / 255)

    def over_white(rgb, al):
        return rgb * al + (1 - al)

    want = over_white(straight, alpha)
    # TIFF output: premultiplied again and labelled associated
    write_photo(tmp_path / "o.tif", p)
    with tifffile.TiffFile(tmp_path / "o.tif") as t:
        assert tuple(int(x) for x in t.pages[0].extrasamples) == (1,)
        o = t.pages[0].asarray().astype(float) / top
    np.testing.assert_allclose(o[0, 0, :3] + (1 - o[0, 0, 3]), want, atol=2 / 255)  # premultiplied composite
    # PNG / WebP output: straight alpha
    for ext in ("png", "webp"):
        write_photo(tmp_path / f"o.{ext}", p)
        o = np.asarray(Image.open(tmp_path / f"o.{ext}")).astype(float)
        o = o / (65535 if o.max() > 255 else 255)
        np.testing.assert_allclose(over_white(o[0, 0, :3], o[0, 0, 3]), want, atol=3 / 255)


def test_associated_gray_alpha(tmp_path):
    a = np.zeros((4, 4, 2), np.uint8)
    a[..., 0], a[..., 1] = 50, 100  # gray 127.5 straight
    tifffile.imwrite(tmp_path / "g.tif", a, photometric="minisblack", extrasamples=["assocalpha"])
    p = read_photo(tmp_path / "g.tif")
    assert p.gray and p.premultiplied
    assert p.rgb[0, 0, 0] == pytest.approx(127.5 / 255, abs=1 / 255)


# ------------------------------------------------------------------------------------ 3. float range


def test_float_range_kept_in_float_tiff_and_clipping_warned(tmp_path, caplog):
    tifffile.imwrite(tmp_path / "f3.tif", np.full((8, 8, 3), 3.0, np.float32), photometric="rgb")
    p = read_photo(tmp_path / "f3.tif")
    assert p.value_range == (0.0, 3.0) and p.rgb.max() <= 1.0
    write_photo(tmp_path / "o.tif", p)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "o.tif"), 3.0, rtol=1e-6)
    rng = np.random.default_rng(0)
    wide = (rng.random((9, 11, 3)) * 4.5 - 0.5).astype(np.float32)  # [-0.5, 4]
    tifffile.imwrite(tmp_path / "w.tif", wide, photometric="rgb")
    q = read_photo(tmp_path / "w.tif")
    write_photo(tmp_path / "w_out.tif", q)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "w_out.tif"), wide, atol=1e-5)
    with caplog.at_level(logging.WARNING):
        for ext in ("png", "jpg"):
            write_photo(tmp_path / f"o.{ext}", p)
    assert any("f3.tif" in r.getMessage() and "100.0%" in r.getMessage() for r in caplog.records)
    assert any("clipped" in w for w in p.warnings)


def test_float_range_through_the_cli(tmp_path):
    rng = np.random.default_rng(1)
    src = (1.0 + rng.random((24, 24, 3)) * 2.0).astype(np.float32)  # [1, 3]
    tifffile.imwrite(tmp_path / "f.tif", src, photometric="rgb")
    r = deblur([tmp_path / "f.tif", "-o", tmp_path / "out", "--json"])  # shipped weights: near the identity
    assert r.exit_code == 0, r.stderr
    out = tifffile.imread(tmp_path / "out" / "f.tif")
    assert out.dtype == np.float32 and out.max() > 2.0  # not clipped to 1.0
    assert abs(float(out.mean()) - float(src.mean())) < 0.5


# ------------------------------------------------------------------------------------ 4. multi-page TIFF


def _multipage(path):
    with tifffile.TiffWriter(path) as tw:
        for k in range(3):
            tw.write(np.full((20, 24, 3), 60 * (k + 1), np.uint8), photometric="rgb")
        tw.write(np.full((10, 12, 3), 9, np.uint8), photometric="rgb", subfiletype=1)  # reduced resolution
    return path


def test_multipage_tiff_every_full_page_deblurred(tmp_path, tiny_weights):
    (tmp_path / "in").mkdir()
    src = _multipage(tmp_path / "in" / "m.tif")
    p = read_photo(src)
    assert len(p.pages) == 2  # three full pages; the reduced one is skipped
    r = deblur([src, "-o", tmp_path / "out", "--json"])  # shipped weights: near the identity
    assert r.exit_code == 0, r.stderr
    with tifffile.TiffFile(tmp_path / "out" / "m.tif") as t:
        pages = [pg.asarray() for pg in t.pages]
    assert [pg.shape for pg in pages] == [(20, 24, 3)] * 3
    assert [round(float(pg.mean()) / 60) for pg in pages] == [1, 2, 3]  # each page its own content
    r = deblur([src, "-o", tmp_path / "out_png", "--ext", "png", "--json"], tiny_weights)
    assert r.exit_code == 0
    f = strict_json(r.stdout)["files"][0]
    assert any("2 further page(s) dropped" in w for w in f["warnings"])
    summary = json.loads((tmp_path / "out_png" / ".cmdd" / "summary.json").read_text())
    assert any("dropped" in w for w in summary["files"][0]["warnings"])


# ------------------------------------------------------------------------------------ 5. camera metadata


@pytest.mark.parametrize("ext", ["tif", "jpg", "png", "webp"])
def test_raw_camera_metadata_in_every_output(tmp_path, tiny_weights, ext):
    src = make_dng(tmp_path / "in.dng")
    r = deblur([src, "-o", tmp_path / "out", "--ext", ext, "--json"], tiny_weights)
    assert r.exit_code == 0, r.stderr
    tags = exiv2_tags(tmp_path / "out" / f"in.{ext}")
    for k in CAMERA_KEYS:
        assert k in tags, (ext, k)
    assert tags["Exif.Image.Make"] == "GenMake" and tags["Exif.Photo.ISOSpeedRatings"] == "400"
    assert tags["Exif.Photo.LensModel"] == "Gen 50mm F2.8" and tags["Exif.Photo.ExposureTime"] == "1/125"
    assert tags.get("Exif.Image.Orientation", "1") == "1"
    assert not any(k.startswith("Exif.Image.DNG") or "SubImage" in k for k in tags)


def test_raw_tiffep_tags_move_to_exif_ifd_and_libraw_fills_gaps(tmp_path):
    # TIFF/EP style: exposure in IFD0 (as Kodak KDC files have it), no lens tag for exiv2 to find
    src = make_dng(tmp_path / "ep.dng", exif={"Exif.Image.ExposureTime": "1/250", "Exif.Image.FNumber": "4/1",
                                              "Exif.Image.FocalLength": "35/1"})
    write_photo(tmp_path / "o.jpg", read_photo(src))
    tags = exiv2_tags(tmp_path / "o.jpg")
    assert tags["Exif.Photo.ExposureTime"] == "1/250" and tags["Exif.Photo.FocalLength"] == "35/1"


def test_raw_without_pyexiv2_says_how_to_fix(tmp_path, monkeypatch):
    src = make_dng(tmp_path / "in.dng")
    monkeypatch.setattr(meta, "_state", {"mod": None, "why": "ImportError: simulated"})
    p = read_photo(src)
    assert any("pip install pyexiv2" in w for w in p.warnings)


def test_tiff_output_keeps_exif_subifd_of_a_jpeg(tmp_path):
    ex = Image.Exif()
    ex[271], ex[272] = "JpegMake", "JpegModel"
    ex.get_ifd(0x8769).update({33434: 1 / 320, 34855: 800, 37386: 85.0})
    Image.fromarray(np.full((12, 12, 3), 120, np.uint8)).save(tmp_path / "a.jpg", exif=ex)
    write_photo(tmp_path / "a.tif", read_photo(tmp_path / "a.jpg"))
    tags = exiv2_tags(tmp_path / "a.tif")
    assert tags["Exif.Image.Make"] == "JpegMake" and tags["Exif.Photo.ISOSpeedRatings"] == "800"
    assert tags["Exif.Photo.ExposureTime"] == "1/320" and "Exif.Photo.FocalLength" in tags


@needs_samples
@pytest.mark.parametrize("ext", ["tif", "jpg"])
def test_real_dng_camera_metadata(tmp_path, ext):
    p = read_photo(SAMPLES / "raw" / "canon_eos_6d.dng", RawSettings(half_size=True))
    write_photo(tmp_path / f"o.{ext}", p)
    tags = exiv2_tags(tmp_path / f"o.{ext}")
    assert tags["Exif.Image.Make"] == "Canon" and tags["Exif.Image.Model"] == "Canon EOS 6D"
    assert tags["Exif.Photo.ISOSpeedRatings"] == "1000" and tags["Exif.Photo.FocalLength"] == "65/1"
    assert tags["Exif.Photo.ExposureTime"] == "1/60" and tags["Exif.Photo.LensModel"] == "EF24-105mm f/4L IS USM"
    assert "Exif.Image.DateTime" in tags


# ------------------------------------------------------------------------------------ 6. eval JSON


def test_eval_identical_pair_gives_strict_json_and_a_finite_mean(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    a = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
    for d in ("pred", "gt"):
        Image.fromarray(a).save(tmp_path / d / "same.png")
    Image.fromarray(b).save(tmp_path / "pred" / "other.png")
    Image.fromarray(a).save(tmp_path / "gt" / "other.png")
    res = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "pred"), "--target", str(tmp_path / "gt"),
                                   "--json", "--out", str(tmp_path / "res")], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    for text in (res.stdout, (tmp_path / "res" / "summary.json").read_text()):
        payload = strict_json(text)
        rows = {r["name"]: r for r in payload["images"]}
        assert rows["same"]["scores"]["psnr"] is None and rows["other"]["scores"]["psnr"] > 20
        overall = payload["summary"][-1]
        assert overall["identical"] == 1 and overall["count"] == 2
        assert overall["means"]["psnr"] == pytest.approx(rows["other"]["scores"]["psnr"])
        assert overall["means"]["ssim"] < 1.0


# ------------------------------------------------------------------------------------ 7. disk full


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_deblur_disk_full_reports_and_exits_1(tmp_path, tiny_weights, monkeypatch):
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setattr(batch, "write_photo", _enospc)
    monkeypatch.setattr(batch, "atomic_write_bytes", _enospc)
    r = deblur([tmp_path / "a.png", "-o", tmp_path / "out", "--json"], tiny_weights)
    assert r.exit_code == 1
    payload = strict_json(r.stdout)  # --json still prints the report
    assert payload["counts"]["failed"] == 1 and "No space left" in payload["files"][0]["reason"]
    assert "summary.json" in payload["summary_error"]
    assert "Traceback" not in r.stderr and "summary.json" in r.stderr
    r = deblur([tmp_path / "a.png", "-o", tmp_path / "out2"], tiny_weights)  # table mode
    assert r.exit_code == 1 and "failed" in r.stderr and "No space left" in r.stderr


def test_eval_out_disk_full_prints_report_and_exits_1(tmp_path, monkeypatch):
    import cmddcli.eval.protocol as E

    a = (np.random.default_rng(2).random((12, 12, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "p.png")
    Image.fromarray(255 - a).save(tmp_path / "t.png")
    monkeypatch.setattr(E, "atomic_write_bytes", _enospc)
    res = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "p.png"), "--target", str(tmp_path / "t.png"),
                                   "--json", "--out", str(tmp_path / "res")], catch_exceptions=False)
    assert res.exit_code == 1
    assert "No space left" in strict_json(res.stdout)["write_error"]
    assert "Traceback" not in res.stderr and "error:" in res.stderr


@pytest.mark.parametrize("failure", ["oserror", "torch_runtime_error"])
def test_checkpoint_disk_full_keeps_the_last_good_one(tmp_path, monkeypatch, failure):
    import torch

    from cmddcli.train import checkpoint as C

    mgr = C.CheckpointManager(tmp_path / "ck", keep_last=1)
    state = {"step": 1, "model": {"w": torch.ones(3)}, "model_config": {}, "train_config": {}, "optimizer": {},
             "rng": {}, "data": {}}
    good = mgr.save(1, state)
    real_save = torch.save

    def full_disk(obj, f):
        f.write(b"partial")
        if failure == "oserror":
            _enospc()
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(C.torch, "save", full_disk)
    with pytest.raises(CmddError, match="cannot write the checkpoint"):
        mgr.save(2, {**state, "step": 2})
    monkeypatch.setattr(C.torch, "save", real_save)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [good.name]  # no temp file, nothing pruned
    assert C.load_checkpoint(good)["step"] == 1 and mgr.latest() == good


# ------------------------------------------------------------------------------------ 8. bombs


def _forged_png(depth: int, w=14000, h=14000) -> bytes:
    """A PNG whose IHDR claims w x h (valid CRC) over a tiny image body."""
    a = np.zeros((2, 2, 3), np.uint16 if depth == 16 else np.uint8)
    data = bytearray(png.write_png(a))
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", w, h, depth, 2, 0, 0, 0)
    data[12:33] = ihdr + struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("depth", [8, 16])
def test_png_bomb_refused_from_the_header(tmp_path, depth):
    f = tmp_path / f"bomb{depth}.png"
    f.write_bytes(_forged_png(depth))
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"14000x14000 is 196\.0 MP, over the 180\.0 MP limit.*--max-megapixels"):
        read_photo(f)
    assert time.perf_counter() - t0 < 1.0


def test_one_limit_for_every_decoder(tmp_path):
    a = np.full((20, 30, 3), 100, np.uint8)
    Image.fromarray(a).save(tmp_path / "a.jpg")
    Image.fromarray(a).save(tmp_path / "a.webp")
    (tmp_path / "a16.png").write_bytes(png.write_png(a.astype(np.uint16) * 257))
    tifffile.imwrite(tmp_path / "a.tif", a, photometric="rgb")
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:  # each page fits, together they do not
        for _ in range(3):
            tw.write(a, photometric="rgb")
    for name in ("a.jpg", "a.webp", "a16.png", "a.tif"):
        with pytest.raises(InputError, match="over the 500 pixels limit"):
            read_photo(tmp_path / name, max_pixels=500)
        assert read_photo(tmp_path / name, max_pixels=600).size == (30, 20)
        assert read_photo(tmp_path / name, max_pixels=None).size == (30, 20)
    with pytest.raises(InputError, match="pages together"):
        read_photo(tmp_path / "pages.tif", max_pixels=1500)
    make_dng(tmp_path / "a.dng")  # 64 x 48: the RAW header is checked before LibRaw unpacks anything
    with pytest.raises(InputError, match="3072 pixels, over the 3000 pixels limit"):
        read_photo(tmp_path / "a.dng", max_pixels=3000)
    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match=r"400x300 is 120000 pixels, over the 10000 pixels limit"):  # one unit
        read_photo(tmp_path / "big.png", max_pixels=10_000)
    assert read_photo(tmp_path / "a.dng", max_pixels=3072).size == (64, 48)


def test_cli_max_megapixels(tmp_path, tiny_weights):
    Image.fromarray(np.full((20, 30, 3), 100, np.uint8)).save(tmp_path / "a.png")
    r = deblur([tmp_path / "a.png", "-o", tmp_path / "out", "--json", "--max-megapixels", "0.0001"], tiny_weights)
    assert r.exit_code == 1
    assert "over the 100 pixels limit" in strict_json(r.stdout)["files"][0]["reason"]
    r = deblur([tmp_path / "a.png", "-o", tmp_path / "out", "--json"], tiny_weights)
    assert r.exit_code == 0


# ------------------------------------------------------------------------------------ 9. resume records


def test_resume_knows_what_made_each_output(tmp_path, tiny_weights, other_weights):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((16, 16, 3), 40, np.uint8)).save(src / "a.jpg")
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(src / "a.png")
    out = tmp_path / "out"
    r = deblur([f"{src}/*.jpg", "-o", out, "--ext", "png", "--json"], tiny_weights)
    assert r.exit_code == 0 and strict_json(r.stdout)["counts"]["done"] == 1
    made = (out / "a.png").read_bytes()
    # another source mapping to the same output: reported, the output is not silently kept
    r = deblur([f"{src}/*.png", "-o", out, "--json"], tiny_weights)
    f = strict_json(r.stdout)["files"][0]
    assert r.exit_code == 1 and f["status"] == "failed" and "a.jpg" in f["reason"]
    assert (out / "a.png").read_bytes() == made
    # the same source and settings: skipped
    r = deblur([f"{src}/*.jpg", "-o", out, "--ext", "png", "--json"], tiny_weights)
    assert r.exit_code == 0 and strict_json(r.stdout)["counts"]["skipped"] == 1
    # other weights: reported
    r = deblur([f"{src}/*.jpg", "-o", out, "--ext", "png", "--json"], other_weights)
    assert r.exit_code == 1 and "weights_sha256" in strict_json(r.stdout)["files"][0]["reason"]
    # the source changed since: reported
    st = (src / "a.jpg").stat()
    os.utime(src / "a.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    r = deblur([f"{src}/*.jpg", "-o", out, "--ext", "png", "--json"], tiny_weights)
    assert r.exit_code == 1 and "earlier version" in strict_json(r.stdout)["files"][0]["reason"]
    # an output nobody recorded: reported
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(out / "stray.png")
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(src / "stray.png")
    r = deblur([src / "stray.png", "-o", out, "--json"], tiny_weights)
    assert r.exit_code == 1 and "no record" in strict_json(r.stdout)["files"][0]["reason"]
    # --overwrite redoes it and records it; the next run skips
    r = deblur([f"{src}/*.png", "-o", out, "--json", "--overwrite"], tiny_weights)
    assert r.exit_code == 0 and strict_json(r.stdout)["counts"]["done"] == 2
    r = deblur([f"{src}/*.png", "-o", out, "--json"], tiny_weights)
    assert r.exit_code == 0 and strict_json(r.stdout)["counts"]["skipped"] == 2


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory):
    import torch
    from _nets import random_net

    from cmddcli.model.weights import save_weights

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("w2") / "tiny_other.safetensors"
    save_weights(random_net("tiny"), path, metadata={"note": "other random init"}, preset="tiny")
    return path


# ------------------------------------------------------------------------------------ 10. smaller


def test_half_size_recorded_only_when_applied(tmp_path, tiny_weights):
    src = make_dng(tmp_path / "lin.dng")  # LinearRaw: LibRaw ignores half_size
    p = read_photo(src, RawSettings(half_size=True))
    assert p.size == (64, 48) and p.raw["half_size_applied"] is False
    assert any("--raw-half-size was ignored" in w for w in p.warnings)
    r = deblur([src, "-o", tmp_path / "out", "--raw-half-size", "--json"], tiny_weights)
    assert any("ignored" in w for w in strict_json(r.stdout)["files"][0]["warnings"])
    assert read_photo(src, RawSettings(half_size=False)).raw["half_size_applied"] is False


@needs_samples
def test_half_size_applied_on_bayer_raw():
    p = read_photo(SAMPLES / "raw" / "pidng_cfa_640x480_test.dng", RawSettings(half_size=True))
    assert p.size == (320, 240) and p.raw["half_size_applied"] is True and not p.warnings


def test_cmyk_warning_tells_the_truth(tmp_path):
    a = np.full((8, 8, 3), 120, np.uint8)
    Image.fromarray(a).convert("CMYK").save(tmp_path / "plain.jpg")
    p = read_photo(tmp_path / "plain.jpg")
    assert p.warnings and "without an ICC profile" in p.warnings[0] and "dropped" not in p.warnings[0]
    Image.fromarray(a).convert("CMYK").save(tmp_path / "fake.jpg", icc_profile=b"not-a-profile")
    q = read_photo(tmp_path / "fake.jpg")
    assert q.icc_profile is None and "unusable" in q.warnings[0] and "dropped" in q.warnings[0]


def test_recursive_follows_symlinked_folders_once(tmp_path, caplog):
    root = tmp_path / "in"
    (root / "real").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(np.full((8, 8, 3), 10, np.uint8)).save(root / "real" / "a.png")
    Image.fromarray(np.full((8, 8, 3), 20, np.uint8)).save(elsewhere / "b.png")
    try:
        (root / "linked").symlink_to(elsewhere, target_is_directory=True)
        (root / "real" / "loop").symlink_to(root, target_is_directory=True)  # a loop back to the top
    except OSError:
        pytest.skip("no symlinks here")
    with caplog.at_level(logging.WARNING):
        found = batch.discover([root], recursive=True)
    names = sorted(f.relative_to(root).as_posix() for f, _ in found)
    assert names == ["linked/b.png", "real/a.png"]
    assert any("already walked" in r.getMessage() for r in caplog.records)


@needs_samples
def test_raw_size_limit_is_the_sensor_size_even_with_half_size():
    """The decompression-bomb limit is checked on the header's sensor size before LibRaw unpacks
    anything, also under --raw-half-size: LibRaw ignores half size for LinearRaw DNGs (here the
    1224x816 canon_eos_6d.dng), which would otherwise develop at 4x the pixels the limit allowed."""
    half = RawSettings(half_size=True)
    for name in ("pidng_cfa_640x480_test.dng", "canon_eos_6d.dng"):
        with pytest.raises(InputError, match="MP limit"):
            read_photo(SAMPLES / "raw" / name, half, max_pixels=300_000)
