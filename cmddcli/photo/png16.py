"""A small numpy PNG codec for what Pillow cannot do: 16-bit RGB / RGBA / gray+alpha samples.

Pillow reduces 48- and 64-bit PNGs to 8 bits and cannot write them, so 16-bit PNGs go through here:

* :func:`read_png` decodes any non-interlaced PNG of bit depth 8 or 16 and colour type 0 (gray),
  2 (RGB), 4 (gray+alpha) or 6 (RGBA), with its iCCP profile, eXIf block and tRNS colour key
  (gAMA/sRGB/cHRM are left aside; the caller turns the key into alpha). For 16-bit RGB/RGBA, Pillow's C decoder undoes the scan-line filters and is asked
  for the high and the low bytes in two passes; any other layout, or a Pillow that refuses, goes
  through a numpy decoder that undoes the filters along anti-diagonals (pixel (r, x) needs
  (r, x-1), (r-1, x) and (r-1, x-1)): about 10 s for 24 MP.
* :func:`write_png` encodes uint8 or uint16 (H, W), (H, W, 2|3|4) arrays, choosing a filter per row
  (the usual minimum-sum-of-absolute-differences heuristic), with optional ICC profile and EXIF.
  Without metadata the same samples always give the same bytes.

This is the one PNG codec of the package: the data pipeline uses it through
:mod:`cmddcli.data.pngio` (path-based wrappers with atomic writes).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["PngError", "PngInfo", "png_info", "read_png", "write_png"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel


class PngError(ValueError):
    """Not a PNG this codec handles (the message says why)."""


@dataclass
class PngInfo:
    width: int
    height: int
    bit_depth: int
    color_type: int
    interlaced: bool
    icc_profile: Optional[bytes] = None
    exif: Optional[bytes] = None  # raw TIFF-structured EXIF (no "Exif\0\0" prefix)
    transparency: Optional[tuple] = None  # tRNS colour key: (gray,) or (r, g, b) sample values


def _chunks(data: bytes):
    if not data.startswith(SIGNATURE):
        raise PngError("not a PNG file")
    pos = len(SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise PngError("truncated PNG file")
        yield ctype, body
        if ctype == b"IEND":
            return
        pos += 12 + length
    raise PngError("truncated PNG file (no IEND chunk)")


def png_info(data: bytes) -> PngInfo:
    """Header fields of a PNG held in ``data`` (reads only up to IHDR)."""
    if not data.startswith(SIGNATURE) or data[12:16] != b"IHDR":
        raise PngError("not a PNG file")
    w, h, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return PngInfo(w, h, depth, ctype, bool(interlace))


def read_png(data: bytes) -> tuple[np.ndarray, PngInfo]:
    """Decode a PNG held in ``data``: (H, W) or (H, W, C) uint8 / uint16, and its header + metadata."""
    info = None
    idat = []
    for ctype, body in _chunks(data):
        if ctype == b"IHDR":
            w, h, depth, color, _c, _f, interlace = struct.unpack(">IIBBBBB", body[:13])
            info = PngInfo(w, h, depth, color, bool(interlace))
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"iCCP" and info is not None:
            name_end = body.index(b"\x00")
            info.icc_profile = zlib.decompress(body[name_end + 2 :])
        elif ctype == b"eXIf" and info is not None:
            info.exif = bytes(body)
        elif ctype == b"tRNS" and info is not None and info.color_type in (0, 2):
            n = 1 if info.color_type == 0 else 3
            if len(body) >= 2 * n:
                info.transparency = struct.unpack(f">{n}H", body[: 2 * n])
    if info is None:
        raise PngError("PNG without an IHDR chunk")
    if info.color_type not in _CHANNELS or info.bit_depth not in (8, 16):
        raise PngError(f"PNG colour type {info.color_type} at {info.bit_depth} bits is not handled here")
    if info.interlaced:
        raise PngError("interlaced (Adam7) 16-bit PNGs are not supported; re-save the file without interlacing")
    if not idat:
        raise PngError("PNG without image data")
    if info.bit_depth == 16 and info.color_type in (2, 6):
        arr = _pillow_16bit_colour(data, "RGB" if info.color_type == 2 else "RGBA")
        if arr is not None and arr.shape[:2] == (info.height, info.width):
            return arr, info
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise PngError(f"corrupt PNG image data ({e})") from e
    ch = _CHANNELS[info.color_type]
    bpp = ch * info.bit_depth // 8  # bytes per pixel
    stride = info.width * bpp
    if len(raw) < info.height * (stride + 1):
        raise PngError("truncated PNG image data")
    rows = np.frombuffer(raw, np.uint8, count=info.height * (stride + 1)).reshape(info.height, stride + 1)
    filters = rows[:, 0].copy()
    if filters.max(initial=0) > 4:
        raise PngError("corrupt PNG image data (bad filter type)")
    pix = _unfilter(rows[:, 1:].reshape(info.height, info.width, bpp), filters)
    if info.bit_depth == 16:
        arr = pix.reshape(info.height, info.width, ch, 2)
        arr = (arr[..., 0].astype(np.uint16) << 8) | arr[..., 1]
    else:
        arr = pix.reshape(info.height, info.width, ch)
    return (arr[..., 0] if ch == 1 else arr), info


def _pillow_16bit_colour(data: bytes, mode: str) -> Optional[np.ndarray]:
    """16-bit RGB(A) samples through Pillow: decode once unpacking the high bytes (``RGB;16B``),
    once unpacking the low bytes (``RGB;16L`` reads the big-endian pairs the other way round).
    None if this Pillow lays the file out differently (the numpy decoder then takes over)."""
    import io

    from PIL import Image

    planes = []
    try:
        for rawmode in (f"{mode};16B", f"{mode};16L"):
            with Image.open(io.BytesIO(data)) as im:
                if im.mode != mode or len(im.tile) != 1 or im.tile[0][0] != "zip":
                    return None
                if im.tile[0][3] not in (f"{mode};16B", (f"{mode};16B",)):
                    return None
                t = im.tile[0]
                im.tile = [t._replace(args=rawmode)] if hasattr(t, "_replace") else [(t[0], t[1], t[2], rawmode)]
                planes.append(np.asarray(im))
    except Exception:  # noqa: BLE001 - any refusal just means "use the numpy decoder"
        return None
    return (planes[0].astype(np.uint16) << 8) | planes[1]


def _paeth(a, b, c):
    a, b, c = a.astype(np.int16), b.astype(np.int16), c.astype(np.int16)
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)).astype(np.uint8)


def _unfilter(f: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Undo PNG filtering of (H, W, bpp) bytes, one anti-diagonal of pixels at a time."""
    H, W, bpp = f.shape
    out = np.zeros((H + 1, W + 1, bpp), np.uint8)  # zero row above and zero column on the left
    # Fast paths: rows with filter None/Up need no left neighbour, so a run of them at the top
    # of the image (or an all-None/Up image) decodes row-parallel.
    if np.isin(filters, (0, 2)).all():
        up = np.where(filters == 2, 1, 0).astype(np.uint8)[:, None, None]
        acc = np.zeros((W, bpp), np.uint8)
        for r in range(H):
            acc = f[r] + acc * up[r]
            out[r + 1, 1:] = acc
        return out[1:, 1:]
    rr = np.arange(H)
    for d in range(H + W - 1):
        r = rr[max(0, d - W + 1) : min(H, d + 1)]
        x = d - r
        raw = f[r, x]  # (n, bpp)
        a = out[r + 1, x]  # left
        b = out[r, x + 1]  # up
        c = out[r, x]  # up-left
        ft = filters[r][:, None]
        pred = np.select(
            [ft == 1, ft == 2, ft == 3, ft == 4],
            [a, b, ((a.astype(np.uint16) + b) >> 1).astype(np.uint8), _paeth(a, b, c)],
            default=0,
        ).astype(np.uint8)
        out[r + 1, x + 1] = raw + pred
    return out[1:, 1:]


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def _filter_rows(pix: np.ndarray, bpp: int, block: int = 128) -> np.ndarray:
    """(H, stride) uint8 -> (H, stride + 1) filtered rows, one filter type per row (the filter with
    the smallest sum of absolute signed differences), computed ``block`` rows at a time."""
    H, stride = pix.shape
    rows = np.empty((H, stride + 1), np.uint8)
    for r0 in range(0, H, block):
        r1 = min(H, r0 + block)
        x = pix[r0:r1].astype(np.int16)  # (h, stride)
        a = np.zeros_like(x)
        a[:, bpp:] = x[:, :-bpp]
        b = np.zeros_like(x)
        b[1:] = x[:-1]
        if r0:
            b[0] = pix[r0 - 1]
        c = np.zeros_like(x)
        c[:, bpp:] = b[:, :-bpp]
        cands = np.stack(
            [x, x - a, x - b, x - ((a + b) >> 1), x - _paeth(a, b, c).astype(np.int16)]
        ).astype(np.uint8)  # (5, h, stride), wrapped mod 256
        cost = np.abs(cands.view(np.int8).astype(np.int16)).sum(-1, dtype=np.int64)  # (5, h)
        best = cost.argmin(0)  # (h,)
        rows[r0:r1, 0] = best
        rows[r0:r1, 1:] = cands[best, np.arange(r1 - r0)]
    return rows


def write_png(
    arr: np.ndarray,
    icc_profile: Optional[bytes] = None,
    exif: Optional[bytes] = None,
    compress_level: int = 6,
) -> bytes:
    """Encode (H, W) / (H, W, 1|2|3|4) uint8 or uint16 samples as PNG bytes."""
    if arr.dtype not in (np.uint8, np.uint16):
        raise PngError(f"PNG samples must be uint8 or uint16, not {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    H, W, ch = arr.shape
    color = {1: 0, 2: 4, 3: 2, 4: 6}.get(ch)
    if color is None or H < 1 or W < 1:
        raise PngError(f"cannot write an image of shape {arr.shape} as PNG")
    depth = 16 if arr.dtype == np.uint16 else 8
    pix = np.ascontiguousarray(arr.astype(">u2") if depth == 16 else arr).view(np.uint8).reshape(H, -1)
    rows = _filter_rows(pix, ch * depth // 8)
    out = [SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, depth, color, 0, 0, 0))]
    if icc_profile:
        out.append(_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        if exif.startswith(b"Exif\x00\x00"):
            exif = exif[6:]
        out.append(_chunk(b"eXIf", exif))
    out.append(_chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)
