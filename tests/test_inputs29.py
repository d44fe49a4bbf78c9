"""Issue 29, inputs and metadata: MinIsWhite TIFFs, EXIF too large for JPEG, 12-bit JPEG, non-finite
predictions in `cmdd eval`, print resolution and PNG colour chunks, files decoders accept with a
warning, every TIFF sample type, and weights whose cmdd metadata is not a JSON object. Each case is
built from a generated file."""

import io
import struct

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from cmddcli.cli.main import app
from cmddcli.errors import InputError, WeightsError
from cmddcli.photo import png, read_photo, write_photo


def _rgb(h=24, w=32, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _png_with_chunks(data: bytes, chunks, before=b"IDAT") -> bytes:
    i = data.index(before) - 4
    return data[:i] + b"".join(png.chunk(c, b) for c, b in chunks) + data[i:]


# ------------------------------------------------------------------------------------ 8. MinIsWhite


def test_one_bit_miniswhite_tiff_keeps_white_paper(tmp_path):
    page = np.zeros((20, 30), bool)  # MinIsWhite: 0 is white paper
    page[5:8, 4:20] = True  # a black stroke
    p = tmp_path / "scan.tif"
    tifffile.imwrite(p, page, photometric="miniswhite")
    photo = read_photo(p)
    assert photo.gray
    assert photo.rgb[0, 0].min() == pytest.approx(1.0)  # paper white
    assert photo.rgb[6, 10].max() == pytest.approx(0.0)  # ink black
    write_photo(tmp_path / "out.png", photo)
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out[0, 0] == 255 and out[6, 10] == 0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gray_miniswhite_tiff_is_inverted(tmp_path, dtype):
    top = np.iinfo(dtype).max
    a = np.zeros((10, 12), dtype)
    a[2:4] = top  # MinIsWhite: max is black
    p = tmp_path / "g.tif"
    tifffile.imwrite(p, a, photometric="miniswhite")
    photo = read_photo(p)
    assert photo.rgb[0, 0].min() == pytest.approx(1.0) and photo.rgb[3, 0].max() == pytest.approx(0.0)


# ------------------------------------------------------------------------------------ 10. EXIF > 64 KB


def _exif_with_comment(n: int) -> Image.Exif:
    ex = Image.Exif()
    ex[271], ex[272] = "BigMake", "BigModel"
    ex.get_ifd(0x8769).update({37510: b"ASCII\x00\x00\x00" + b"x" * n, 33434: 0.01, 34855: 100})
    return ex


def test_exif_too_large_for_jpeg_drops_the_big_tags_with_a_warning(tmp_path):
    p = tmp_path / "big.png"
    Image.fromarray(_rgb()).save(p, exif=_exif_with_comment(105_000).tobytes())  # a 105 KB eXIf chunk
    assert len(png._metadata(p.read_bytes()).exif) > 100_000
    photo = read_photo(p)
    write_photo(tmp_path / "out.jpg", photo)  # was: ValueError: EXIF data is too long
    assert any("UserComment" in w and "dropped" in w for w in photo.warnings), photo.warnings
    with Image.open(tmp_path / "out.jpg") as im:
        ex = im.getexif()
        assert ex.get(271) == "BigMake" and ex.get_ifd(0x8769).get(34855) == 100
    write_photo(tmp_path / "out.png", photo)  # PNG holds it all
    with Image.open(tmp_path / "out.png") as im:
        assert len(im.getexif().get_ifd(0x8769).get(37510)) > 100_000


def test_exif_too_large_batch_goes_on_with_summary(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_rgb()).save(src / "a_big.png", exif=_exif_with_comment(105_000).tobytes())
    Image.fromarray(_rgb(seed=1)).save(src / "b_ok.png")
    photo = read_photo(src / "a_big.png")
    write_photo(tmp_path / "a.jpg", photo)
    assert (tmp_path / "a.jpg").stat().st_size > 0


def test_many_exif_tags_too_large_keep_only_the_basic_tags(tmp_path):
    ex = Image.Exif()
    ex[271], ex[272], ex[306] = "M", "X", "2024:01:01 00:00:00"
    ex[270] = "d" * 30_000  # ImageDescription
    ex[315] = "a" * 30_000  # Artist
    ex[33432] = "c" * 30_000  # Copyright
    p = tmp_path / "big.png"
    Image.fromarray(_rgb()).save(p, exif=ex.tobytes())
    photo = read_photo(p)
    write_photo(tmp_path / "out.jpg", photo)
    with Image.open(tmp_path / "out.jpg") as im:
        got = im.getexif()
        assert got.get(271) == "M" and got.get(272) == "X"
    assert any("dropped" in w and "APP1" in w for w in photo.warnings), photo.warnings


# ------------------------------------------------------------------------------------ 11. 12-bit JPEG


def test_twelve_bit_jpeg_is_decoded(tmp_path):
    imagecodecs = pytest.importorskip("imagecodecs")
    a = (np.random.default_rng(3).random((16, 24, 3)) * 4095).astype(np.uint16)
    a[:, :12] = 4095 // 3
    try:
        data = imagecodecs.jpeg8_encode(a, level=100, bitspersample=12)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"this imagecodecs cannot encode 12-bit JPEG ({e})")
    p = tmp_path / "twelve.jpg"
    p.write_bytes(bytes(data))
    photo = read_photo(p)  # was: "not an image (unrecognised format)"
    assert photo.bit_depth == 16 and photo.format == "jpeg"
    ref = imagecodecs.jpeg8_decode(bytes(data)).astype(np.float32) / 4095
    assert np.abs(photo.rgb - ref).max() < 1e-3
    assert photo.rgb[:, :12].mean() == pytest.approx(1 / 3, abs=0.01)
    write_photo(tmp_path / "out.png", photo)
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (24, 16)


# ------------------------------------------------------------------------------------ 12. NaN in eval


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_eval_refuses_non_finite_prediction(tmp_path, bad):
    rng = np.random.default_rng(4)
    t = rng.random((16, 16, 3)).astype(np.float32)
    pred = t.copy()
    pred[0, :5, 0] = bad
    (tmp_path / "p").mkdir()
    (tmp_path / "t").mkdir()
    tifffile.imwrite(tmp_path / "p" / "a.tif", pred)
    tifffile.imwrite(tmp_path / "t" / "a.tif", t)
    res = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "p"), "--target", str(tmp_path / "t")])
    text = " ".join(res.output.split())
    assert res.exit_code == 1, res.output
    assert "a.tif" in text and "5 non-finite" in text


def test_deblur_read_warns_about_non_finite_samples(tmp_path):
    a = np.random.default_rng(5).random((8, 8, 3)).astype(np.float32)
    a[0, 0, 0] = np.nan
    a[1, 1, 1] = np.inf
    tifffile.imwrite(tmp_path / "f.tif", a)
    photo = read_photo(tmp_path / "f.tif")
    assert any("2 non-finite" in w for w in photo.warnings), photo.warnings


# ------------------------------------------------------------------------------------ 13. dpi and colour


@pytest.mark.parametrize("src_ext", ["jpg", "png", "tif"])
@pytest.mark.parametrize("out_ext", ["jpg", "png", "tif"])
def test_print_resolution_is_kept(tmp_path, src_ext, out_ext):
    p = tmp_path / f"in.{src_ext}"
    if src_ext == "tif":
        tifffile.imwrite(p, _rgb(), photometric="rgb", resolution=(300, 300), resolutionunit="INCH")
    else:
        Image.fromarray(_rgb()).save(p, dpi=(300, 300))
    photo = read_photo(p)
    out = tmp_path / f"out.{out_ext}"
    write_photo(out, photo)
    with Image.open(out) as im:
        dpi = im.info.get("dpi")
    assert dpi is not None and round(dpi[0]) == 300 and round(dpi[1]) == 300, (dpi, photo.warnings)


def test_print_resolution_of_16bit_png_is_kept(tmp_path):
    data = png.write_png((np.random.default_rng(6).random((8, 8, 3)) * 65535).astype(np.uint16))
    data = _png_with_chunks(data, [(b"pHYs", struct.pack(">IIB", 11811, 11811, 1))])
    (tmp_path / "a.png").write_bytes(data)
    photo = read_photo(tmp_path / "a.png")
    for ext in ("png", "tif", "jpg"):
        write_photo(tmp_path / f"o.{ext}", photo)
        with Image.open(tmp_path / f"o.{ext}") as im:
            assert round(im.info["dpi"][0]) == 300, ext


def _png_bytes(bits: int) -> bytes:
    """A small RGB PNG, 8-bit (Pillow) or 16-bit (cmdd's libpng writer), as bytes."""
    if bits == 8:
        b = io.BytesIO()
        Image.fromarray(_rgb()).save(b, format="PNG")
        return b.getvalue()
    return png.write_png(_rgb().astype(np.uint16) * 257)


@pytest.mark.parametrize("bits", [8, 16])
def test_png_colour_chunks_are_kept_in_png_and_named_when_dropped(tmp_path, bits):
    data = _png_bytes(bits)
    gama = struct.pack(">I", 45455)
    chrm = struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)
    data = _png_with_chunks(data, [(b"gAMA", gama), (b"cHRM", chrm), (b"sRGB", b"\x00")])
    (tmp_path / "c.png").write_bytes(data)
    photo = read_photo(tmp_path / "c.png")
    write_photo(tmp_path / "o.png", photo)
    with Image.open(tmp_path / "o.png") as im:
        assert im.info.get("gamma") == pytest.approx(0.45455)
        assert im.info.get("srgb") == 0
        assert im.info.get("chromaticity")[0] == pytest.approx(0.3127)
    write_photo(tmp_path / "o.jpg", photo)
    assert any("gAMA" in w and "cHRM" in w and "dropped" in w for w in photo.warnings), photo.warnings


def test_webp_output_names_the_dropped_resolution(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "a.jpg", dpi=(300, 300))
    photo = read_photo(tmp_path / "a.jpg")
    write_photo(tmp_path / "a.webp", photo)
    assert any("300 dpi" in w and "dropped" in w for w in photo.warnings), photo.warnings


# ------------------------------------------------------------------------------------ 14. decoder warnings


def _jpeg(seed=0) -> bytes:
    b = io.BytesIO()
    Image.fromarray(_rgb(64, 64, seed)).save(b, format="JPEG", quality=90)
    return b.getvalue()


def test_truncated_but_decodable_jpeg_is_deblurred_with_a_warning(tmp_path):
    data = _jpeg()
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: int(len(data) * 0.8)])
    photo = read_photo(p)  # was refused: "corrupt or truncated image (image file is truncated ...)"
    assert photo.size == (64, 64)
    assert any("truncated" in w for w in photo.warnings), photo.warnings


def test_jpeg_without_any_scan_data_is_still_refused(tmp_path):
    data = _jpeg()
    sos = data.index(b"\xff\xda")
    p = tmp_path / "head.jpg"
    p.write_bytes(data[:sos])
    with pytest.raises(InputError, match="head.jpg"):
        read_photo(p)


@pytest.mark.parametrize("bits", [8, 16])
def test_png_with_bad_ancillary_crc_or_trailing_data_is_read_with_a_warning(tmp_path, bits):
    data = _png_bytes(bits)
    body = b"Comment\x00hello"
    bad = struct.pack(">I", len(body)) + b"tEXt" + body + b"\x00\x00\x00\x00"  # wrong CRC
    i = data.index(b"IDAT") - 4
    p = tmp_path / "crc.png"
    p.write_bytes(data[:i] + bad + data[i:])
    photo = read_photo(p)
    assert photo.size == (32, 24)
    assert any("CRC" in w or "checksum" in w for w in photo.warnings), photo.warnings
    p2 = tmp_path / "tail.png"
    p2.write_bytes(data + b"trailing garbage" * 10)
    photo = read_photo(p2)
    assert photo.size == (32, 24)
    assert any("after" in w and "IEND" in w for w in photo.warnings), photo.warnings


SAMPLE_TYPES = [np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32, np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", SAMPLE_TYPES, ids=lambda d: np.dtype(d).name)
def test_every_tiff_sample_type_keeps_its_type_in_a_tiff_output(tmp_path, dtype):
    rng = np.random.default_rng(7)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo, hi = max(info.min, -1000), min(info.max, 60000 if info.max > 65535 else info.max)
        a = rng.integers(lo, hi, (12, 16, 3), endpoint=True).astype(dtype)
    else:
        a = (rng.random((12, 16, 3)) * 3 - 1).astype(dtype)
    tifffile.imwrite(tmp_path / "in.tif", a, photometric="rgb")
    photo = read_photo(tmp_path / "in.tif")
    write_photo(tmp_path / "out.tif", photo)
    b = tifffile.imread(tmp_path / "out.tif")
    assert b.dtype == np.dtype(dtype), (b.dtype, photo.warnings)
    tol = 1 if np.issubdtype(dtype, np.integer) else 2e-3
    assert np.abs(b.astype(np.float64) - a.astype(np.float64)).max() <= tol


def test_one_bit_tiff_output_says_what_it_became(tmp_path):
    page = np.random.default_rng(8).random((16, 16)) > 0.5
    tifffile.imwrite(tmp_path / "bw.tif", page, photometric="minisblack")
    photo = read_photo(tmp_path / "bw.tif")
    write_photo(tmp_path / "out.tif", photo)
    assert tifffile.imread(tmp_path / "out.tif").dtype == np.uint8
    assert any("1-bit" in w and "8-bit" in w for w in photo.warnings), photo.warnings


# ------------------------------------------------------------------------------------ 6. weights metadata


@pytest.mark.parametrize("value", ["[1, 2]", '"a string"', "42", "null"])
def test_info_weights_with_non_object_metadata_is_one_line(tmp_path, value):
    from safetensors.torch import save_file
    import torch

    w = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, str(w), metadata={"cmdd": value})
    res = CliRunner().invoke(app, ["info", "--weights", str(w)])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and str(w.name) in res.output
    from cmddcli.model.weights import read_metadata

    with pytest.raises(WeightsError, match="w.safetensors"):
        read_metadata(w)
