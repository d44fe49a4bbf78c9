"""Photo I/O: every format both ways, bit depth, gray, alpha, EXIF orientation, ICC, RAW, bad files."""

import io
import struct
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, ImageOps

from cmddcli.errors import InputError
from cmddcli.photo import (
    Photo,
    RawSettings,
    apply_orientation,
    read_photo,
    srgb_icc_profile,
    write_photo,
)
from cmddcli.atomic import atomic_path
from cmddcli.photo import png

SAMPLES = Path("/work/shared/samples")
if not SAMPLES.is_dir():  # CI: shared/ beside the clone
    SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
RAW_OK = ["RAW_KODAK_DC50.KDC", "canon_eos_6d.dng", "pidng_cfa_640x480_test.dng"]
RAW_BAD = {
    "IMG_1361_iphone12pro_pruned.dng": "all-black",
    "nikon_z_9_high_efficiency_compressed_dx_cropped_max_overexposed.dng": "unsupported RAW",
    "sony_alpha_a7iii_truncated.ARW": "truncated or corrupt",
}
needs_samples = pytest.mark.skipif(not (SAMPLES / "raw").is_dir(), reason="shared/samples not present")

ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def gradient(h=24, w=32, depth=8, ch=3, seed=0):
    """A smooth colour ramp plus noise, so every filter and sample value path is exercised."""
    rng = np.random.default_rng(seed)
    top = 255 if depth == 8 else 65535
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), (x + y) / max(h + w - 2, 1), 1 - x / max(w - 1, 1)], -1)
    a = np.clip(base[..., :ch] * top * 0.9 + rng.integers(0, top // 10, (h, w, ch)), 1, top)
    a = a.astype(np.uint8 if depth == 8 else np.uint16)
    return a[..., 0] if ch == 1 else a


# ------------------------------------------------------------------------------------ PNG codec


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_png_codec_decodes_pillow_files(mode):
    from skimage import data

    img = data.astronaut()[:96, :128]
    arr = {"RGB": img, "RGBA": np.dstack([img, img[..., 0]]), "L": img[..., 1], "LA": img[..., 1:3]}[mode]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    data_ = buf.getvalue()
    decoded, info = png.read_png(data_)
    np.testing.assert_array_equal(decoded, np.asarray(Image.open(io.BytesIO(data_))))


@pytest.mark.parametrize("ch", [1, 2, 3, 4])
@pytest.mark.parametrize("depth", [8, 16])
def test_png_codec_round_trip(ch, depth):
    arr = gradient(37, 23, depth, ch)
    data = png.write_png(arr, icc_profile=ICC, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00")
    back, info = png.read_png(data)
    np.testing.assert_array_equal(back, arr)
    assert info.icc_profile == ICC and info.exif.startswith(b"MM\x00*")
    assert Image.open(io.BytesIO(data)).info["icc_profile"] == ICC  # Pillow agrees on the metadata


def _png_file(width, height, depth, color, rows, plte=b""):
    """A PNG written by hand: packed rows (filter 0) at any legal bit depth, optional palette."""
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    body = b"".join(b"\x00" + r for r in rows)
    return (png.SIGNATURE + png.chunk(b"IHDR", ihdr) + (png.chunk(b"PLTE", plte) if plte else b"")
            + png.chunk(b"IDAT", zlib.compress(body)) + png.chunk(b"IEND", b""))


def _pack(values, depth):
    """One row of samples packed MSB-first at 1 / 2 / 4 / 8 / 16 bits."""
    if depth == 16:
        return np.asarray(values, ">u2").tobytes()
    if depth == 8:
        return np.asarray(values, np.uint8).tobytes()
    bits = np.unpackbits(np.asarray(values, np.uint8)[:, None], axis=1)[:, 8 - depth:]
    return np.packbits(bits.reshape(-1)).tobytes()


# Every (colour type, bit depth) the PNG spec allows.
PNG_KINDS = [(0, 1), (0, 2), (0, 4), (0, 8), (0, 16), (2, 8), (2, 16), (3, 1), (3, 2), (3, 4), (3, 8),
             (4, 8), (4, 16), (6, 8), (6, 16)]


@pytest.mark.parametrize("color,depth", PNG_KINDS, ids=[f"type{c}-{d}bit" for c, d in PNG_KINDS])
def test_png_every_colour_type_and_bit_depth_round_trips(tmp_path, color, depth):
    """Decoded exactly by read_photo; kept at 8 / 16 bits (and gray / alpha) when written back as PNG."""
    h, w = 5, 9
    top = 2**depth - 1
    rng = np.random.default_rng(color * 100 + depth)
    if color in (0, 3):
        idx = rng.integers(0, top + 1, (h, w))
        if color == 0:
            rows = [_pack(r, depth) for r in idx]
            want = np.repeat((idx / top)[..., None], 3, axis=2)
            data = _png_file(w, h, depth, 0, rows)
        else:
            pal = rng.integers(0, 256, (top + 1, 3))
            rows = [_pack(r, depth) for r in idx]
            want = pal[idx] / 255.0
            data = _png_file(w, h, depth, 3, rows, plte=pal.astype(np.uint8).tobytes())
        alpha = None
    else:
        ch = {2: 3, 4: 2, 6: 4}[color]
        arr = rng.integers(0, top + 1, (h, w, ch)).astype(np.uint8 if depth == 8 else np.uint16)
        data = png.write_png(arr)
        color_part = arr[..., :3] if ch >= 3 else np.repeat(arr[..., :1], 3, axis=2)
        want = color_part / top
        alpha = arr[..., -1] / top if ch in (2, 4) else None
    src = tmp_path / "in.png"
    src.write_bytes(data)
    photo = read_photo(src)
    np.testing.assert_allclose(photo.rgb, want, atol=1e-6)
    if alpha is not None:
        np.testing.assert_allclose(photo.alpha, alpha, atol=1e-6)
    out = tmp_path / "out.png"
    write_photo(out, photo)
    back = read_photo(out)
    np.testing.assert_allclose(back.rgb, photo.rgb, atol=1e-6)
    assert back.bit_depth == (16 if depth == 16 else 8) and back.gray == (color in (0, 4))


def test_png_codec_errors():
    with pytest.raises(png.PngError):
        png.read_png(b"not a png")
    data = png.write_png(gradient(10, 10, 16, 3))
    with pytest.raises(png.PngError):
        png.read_png(data[: len(data) // 2])


# ------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize("ext,depth,ch", [
    ("png", 8, 3), ("png", 8, 1), ("png", 8, 4), ("png", 8, 2),
    ("png", 16, 3), ("png", 16, 1), ("png", 16, 4), ("png", 16, 2),
    ("tif", 8, 3), ("tif", 8, 1), ("tif", 8, 4), ("tif", 16, 3), ("tif", 16, 1), ("tif", 16, 4), ("tif", 16, 2),
])
def test_lossless_round_trip_keeps_depth_gray_alpha(tmp_path, ext, depth, ch):
    arr = gradient(21, 34, depth, ch)
    src = tmp_path / f"in.{ext}"
    if ext == "png":
        src.write_bytes(png.write_png(arr, icc_profile=ICC))
    else:
        tifffile.imwrite(src, arr, photometric="minisblack" if ch in (1, 2) else "rgb",
                         extrasamples=["unassalpha"] if ch in (2, 4) else None, iccprofile=ICC)
    p = read_photo(src)
    top = 255.0 if depth == 8 else 65535.0
    assert p.rgb.shape == (21, 34, 3) and p.rgb.dtype == np.float32
    assert p.bit_depth == depth and p.gray == (ch in (1, 2)) and (p.alpha is not None) == (ch in (2, 4))
    assert p.icc_profile == ICC
    color = arr if ch == 1 else arr[..., : (1 if ch == 2 else 3)]
    np.testing.assert_allclose(p.rgb[..., 0], (color if ch == 1 else color[..., 0]) / top, atol=1e-7)
    out = tmp_path / f"out.{ext}"
    write_photo(out, p)
    q = read_photo(out)
    assert q.bit_depth == depth and q.gray == p.gray and q.icc_profile == ICC
    np.testing.assert_array_equal(q.rgb, p.rgb)
    if p.alpha is not None:
        np.testing.assert_array_equal(q.alpha, p.alpha)
        np.testing.assert_array_equal(np.rint(q.alpha * top), arr[..., -1])
    raw_back = png.read_png(out.read_bytes())[0] if ext == "png" else tifffile.imread(out)
    np.testing.assert_array_equal(raw_back, arr)  # the file holds exactly the input samples


def test_planar_and_float_tiff(tmp_path):
    arr = gradient(12, 16, 16, 3)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(arr, -1, 0), photometric="rgb", planarconfig="separate")
    p = read_photo(tmp_path / "planar.tif")
    np.testing.assert_allclose(p.rgb, arr / 65535.0, atol=1e-7)
    f = (arr / 65535.0).astype(np.float32)
    tifffile.imwrite(tmp_path / "float.tif", f, photometric="rgb")
    p = read_photo(tmp_path / "float.tif")
    assert p.bit_depth == 32
    write_photo(tmp_path / "float_out.tif", p)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "float_out.tif"), f)


def test_16bit_to_8bit_formats(tmp_path):
    arr = gradient(10, 12, 16, 4)
    (tmp_path / "a.png").write_bytes(png.write_png(arr))
    p = read_photo(tmp_path / "a.png")
    write_photo(tmp_path / "a.jpg", p)
    write_photo(tmp_path / "a.webp", p)
    write_photo(tmp_path / "a8.png", p, bit_depth=8)
    assert Image.open(tmp_path / "a.jpg").mode == "RGB"  # alpha dropped
    assert Image.open(tmp_path / "a.webp").mode == "RGBA"
    a8 = np.asarray(Image.open(tmp_path / "a8.png"))
    assert a8.dtype == np.uint8 and a8.shape == (10, 12, 4)
    np.testing.assert_array_equal(a8, np.rint(arr / 257.0).astype(np.uint8))


def test_jpeg_and_webp_read(tmp_path):
    arr = gradient(40, 48, 8, 3)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=98)
    Image.fromarray(arr).save(tmp_path / "a.webp", lossless=True)
    j = read_photo(tmp_path / "a.jpg")
    w = read_photo(tmp_path / "a.webp")
    assert j.format == "jpeg" and j.bit_depth == 8
    np.testing.assert_array_equal(np.rint(j.rgb * 255), np.asarray(Image.open(tmp_path / "a.jpg")))
    assert w.format == "webp"
    np.testing.assert_array_equal(np.rint(w.rgb * 255), arr)


def test_palette_cmyk_and_bilevel(tmp_path):
    arr = gradient(16, 16, 8, 3)
    Image.fromarray(arr).convert("P").save(tmp_path / "p.png", transparency=0)
    p = read_photo(tmp_path / "p.png")
    assert p.alpha is not None and not p.gray
    Image.fromarray(arr).convert("CMYK").save(tmp_path / "c.jpg", icc_profile=b"fake-cmyk-profile")
    c = read_photo(tmp_path / "c.jpg")
    assert c.icc_profile is None and c.rgb.shape == (16, 16, 3)
    Image.fromarray(arr[..., 0] > 128).save(tmp_path / "b.png")
    b = read_photo(tmp_path / "b.png")
    assert b.gray and b.bit_depth == 8


# ------------------------------------------------------------------------------------ EXIF / ICC


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pillow(orientation):
    arr = gradient(5, 7, 8, 3)
    im = Image.fromarray(arr)
    im.getexif()[274] = orientation  # exif_transpose reads this cached Exif
    expected = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(apply_orientation(arr, orientation), expected)


def _jpeg_with_exif(path, arr, orientation):
    im = Image.fromarray(arr)
    ex = Image.Exif()
    ex[271] = "TestMake"
    ex[272] = "TestModel"
    ex[274] = orientation
    ex[256] = 9999  # a layout tag from some other file: must not be copied
    ex.get_ifd(0x8769)[0x829A] = 0.01  # ExposureTime
    ex.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"
    im.save(path, "JPEG", exif=ex, icc_profile=ICC, quality=100, subsampling=0)


def test_exif_orientation_applied_once_and_reset(tmp_path):
    """Policy: pixels upright on read, Orientation=1 on write, so no viewer rotates twice."""
    arr = gradient(20, 30, 8, 3)  # stored landscape, tag says "rotate 90 CW" -> portrait
    src = tmp_path / "rot.jpg"
    _jpeg_with_exif(src, arr, 6)
    p = read_photo(src)
    assert p.rgb.shape == (30, 20, 3)  # upright
    expected = np.asarray(ImageOps.exif_transpose(Image.open(src)))
    assert np.abs(np.rint(p.rgb * 255) - expected).max() <= 1
    assert p.exif[274] == 1 and 256 not in p.exif
    for ext in ("jpg", "png", "webp"):
        out = tmp_path / f"out.{ext}"
        write_photo(out, p)
        im = Image.open(out)
        ex = im.getexif()
        assert im.size == (20, 30), ext  # portrait pixels
        assert ex.get(274) == 1 and ex.get(271) == "TestMake" and ex.get(272) == "TestModel", ext
        assert ex.get_ifd(0x8769).get(0x9003) == "2024:01:02 03:04:05", ext
        assert im.info.get("icc_profile") == ICC, ext
        # and a viewer that honours EXIF shows it the same way (no second rotation)
        assert ImageOps.exif_transpose(im).size == (20, 30)
        q = read_photo(out)
        assert q.rgb.shape == (30, 20, 3)


def test_exif_on_16bit_png_and_tiff(tmp_path):
    src = tmp_path / "rot.jpg"
    _jpeg_with_exif(src, gradient(8, 12, 8, 3), 8)
    p = read_photo(src)
    write_photo(tmp_path / "o.png", p, bit_depth=16)
    q = read_photo(tmp_path / "o.png")
    assert q.bit_depth == 16 and q.exif[271] == "TestMake" and q.exif[274] == 1 and q.icc_profile == ICC
    write_photo(tmp_path / "o.tif", p, bit_depth=16)
    with tifffile.TiffFile(tmp_path / "o.tif") as t:
        page = t.pages[0]
        assert page.dtype == np.uint16 and page.shape == (12, 8, 3)
        assert page.tags[271].value == "TestMake" and bytes(page.tags[34675].value) == ICC
        assert 274 not in page.tags or page.tags[274].value == 1


def test_orientation_in_tiff_source(tmp_path):
    arr = gradient(6, 10, 16, 3)
    tifffile.imwrite(tmp_path / "o.tif", arr, photometric="rgb", extratags=[(274, "H", 1, 8, True)])
    p = read_photo(tmp_path / "o.tif")
    assert p.rgb.shape == (10, 6, 3)
    np.testing.assert_array_equal(np.rint(p.rgb * 65535).astype(np.uint16), np.rot90(arr))


# ------------------------------------------------------------------------------------ RAW


@needs_samples
@pytest.mark.parametrize("name", RAW_OK)
def test_raw_samples_develop(name):
    p = read_photo(SAMPLES / "raw" / name)
    assert p.format == "raw" and p.bit_depth == 16 and p.rgb.ndim == 3 and p.rgb.shape[2] == 3
    assert p.icc_profile == srgb_icc_profile()
    assert p.raw["postprocess"]["use_camera_wb"] is True and p.raw["postprocess"]["output_bps"] == 16
    assert 0 < p.rgb.mean() < 1


@needs_samples
def test_raw_options():
    f = SAMPLES / "raw" / "pidng_cfa_640x480_test.dng"
    full = read_photo(f)
    half = read_photo(f, RawSettings(half_size=True))
    lin = read_photo(f, RawSettings(linear=True))
    assert full.rgb.shape == (480, 640, 3) and half.rgb.shape == (240, 320, 3)
    assert lin.icc_profile is None and lin.raw["postprocess"]["gamma"] == [1.0, 1.0]
    assert lin.rgb.mean() < full.rgb.mean()  # linear is darker than the sRGB curve


@needs_samples
@pytest.mark.parametrize("name,why", sorted(RAW_BAD.items()))
def test_raw_edge_cases_fail_cleanly(name, why):
    with pytest.raises(InputError) as ei:
        read_photo(SAMPLES / "raw" / "edge_cases" / name)
    assert why in ei.value.reason and "\n" not in str(ei.value)


@needs_samples
def test_real_defocus_jpegs_decode():
    files = sorted((SAMPLES / "defocus" / "blurred_only").glob("*.jpg"))
    assert files
    for f in files:
        p = read_photo(f)
        assert p.bit_depth == 8 and p.rgb.shape[2] == 3 and 0 < p.rgb.mean() < 1


# ------------------------------------------------------------------------------------ bad files


def test_bad_files_fail_with_one_line(tmp_path):
    cases = {}
    (tmp_path / "zero.jpg").write_bytes(b"")
    cases["zero.jpg"] = "empty file"
    (tmp_path / "text.png").write_text("hello, I am not an image\n")
    cases["text.png"] = "not an image"
    buf = io.BytesIO()
    Image.fromarray(gradient(64, 64, 8, 3)).save(buf, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[:600])
    cases["trunc.jpg"] = "truncated"
    data = png.write_png(gradient(32, 32, 16, 3))
    (tmp_path / "trunc16.png").write_bytes(data[: len(data) // 2])
    cases["trunc16.png"] = "truncated"
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\xff" * 40)
    cases["bad.tif"] = "TIFF"
    for name, why in cases.items():
        with pytest.raises(InputError) as ei:
            read_photo(tmp_path / name)
        assert why in str(ei.value), (name, str(ei.value))
        assert "\n" not in str(ei.value)
    with pytest.raises(InputError, match="not found"):
        read_photo(tmp_path / "missing.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "black.png")  # valid, if dark: only a RAW developing to black fails
    assert read_photo(tmp_path / "black.png").rgb.max() == 0
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(InputError, match="leads nowhere"):
        read_photo(tmp_path / "loop.png")


# ------------------------------------------------------------------------------------ atomic writes


def test_atomic_path_cleans_up_on_error_and_interrupt(tmp_path):
    dest = tmp_path / "sub" / "out.png"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"new")
            raise RuntimeError
    assert dest.read_bytes() == b"old"
    with atomic_path(dest) as tmp:
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"new" and (dest.stat().st_mode & 0o077) != 0  # not left at 0600
    assert sorted(p.name for p in dest.parent.iterdir()) == ["out.png"]


def test_write_photo_interrupted_leaves_nothing(tmp_path, monkeypatch):
    p = Photo(rgb=np.random.default_rng(0).random((8, 8, 3), dtype=np.float32))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(png, "write_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_photo(tmp_path / "x.png", p, bit_depth=16)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_unknown_extension(tmp_path, caplog):
    p = Photo(rgb=np.zeros((2, 2, 3), np.float32))
    with pytest.raises(InputError, match="cannot write"):
        write_photo(tmp_path / "x.bmp", p)
    with caplog.at_level(logging.WARNING):
        write_photo(tmp_path / "x.jpg", Photo(rgb=np.zeros((2, 2, 3), np.float32), alpha=np.ones((2, 2), np.float32)))
    assert "alpha" in caplog.text


def test_decoder_warnings_are_kept_with_the_file_name(tmp_path):
    """Pillow's own warnings about a damaged EXIF block become the photo's warnings (logged with the
    file's name) instead of raw UserWarnings on stderr."""
    import struct
    import warnings

    exif = (b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
            + struct.pack("<HHII", 0x010E, 2, 100, 1000) + struct.pack("<I", 0))  # a tag pointing past the end
    Image.new("RGB", (32, 32), (120, 60, 30)).save(tmp_path / "bad_exif.jpg", exif=exif)
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        photo = read_photo(tmp_path / "bad_exif.jpg")
    assert not leaked
    assert any(w.startswith("decoder: ") and "tag" in w.lower() for w in photo.warnings)
