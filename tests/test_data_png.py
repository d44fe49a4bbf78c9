"""PNG codec used by the data pipeline: 8/16-bit round trips, all PNG row filters, errors."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from cmddcli.photo.arrays import encode_png, from_float, png_header, read_image, to_float, write_png
from cmddcli.errors import InputError


def _encode_with_filters(a: np.ndarray) -> bytes:
    """A reference 16-bit RGB PNG encoder that cycles through the five row filters (0..4), like
    encoders that choose filters adaptively (OpenCV, libpng)."""
    h, w, c = a.shape
    rows = a.astype(">u2").view(np.uint8).reshape(h, -1).astype(np.int32)
    bpp = 2 * c
    out = []
    for i in range(h):
        raw = rows[i]
        up = rows[i - 1] if i else np.zeros_like(raw)
        left = np.concatenate([np.zeros(bpp, np.int32), raw[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        ftype = i % 5
        if ftype == 0:
            f = raw
        elif ftype == 1:
            f = raw - left
        elif ftype == 2:
            f = raw - up
        elif ftype == 3:
            f = raw - (left + up) // 2
        else:
            p = left + up - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
            f = raw - pred
        out.append(bytes([ftype]) + (f % 256).astype(np.uint8).tobytes())

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    idat = zlib.compress(b"".join(out))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("shape,dtype", [((13, 17, 3), np.uint16), ((13, 17, 4), np.uint16), ((13, 17), np.uint16),
                                         ((13, 17, 3), np.uint8), ((13, 17), np.uint8), ((13, 17, 4), np.uint8)])
def test_roundtrip(tmp_path, shape, dtype):
    rng = np.random.default_rng(0)
    a = rng.integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
    write_png(tmp_path / "a.png", a)
    b = read_image(tmp_path / "a.png", channels=0)
    assert b.dtype == dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    rgb = read_image(tmp_path / "a.png")
    assert rgb.shape == (13, 17, 3) and rgb.dtype == dtype


def test_reads_all_png_filters_16bit(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 65536, (11, 9, 3)).astype(np.uint16)
    (tmp_path / "f.png").write_bytes(_encode_with_filters(a))
    np.testing.assert_array_equal(read_image(tmp_path / "f.png"), a)
    assert png_header(tmp_path / "f.png") == (9, 11, 16, 2)


def test_encoding_is_deterministic_and_float_conversions():
    a = (np.arange(4 * 5 * 3) * 1000 % 65536).astype(np.uint16).reshape(4, 5, 3)
    assert encode_png(a) == encode_png(a.copy())
    x = to_float(a)
    assert x.dtype == np.float32 and x.max() <= 1.0
    np.testing.assert_array_equal(from_float(x, 16), a)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nrubbish")
    with pytest.raises(InputError, match="bad.png"):
        read_image(tmp_path / "bad.png")
