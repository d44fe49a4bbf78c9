"""PNG at 8 and 16 bits through imagecodecs (libpng), plus the few chunks we carry ourselves.

Pillow reduces 48- and 64-bit PNGs to 8 bits and cannot write them, so PNGs that need their full
depth go through here:

* :func:`read_png` decodes any PNG of bit depth 8 or 16 and colour type 0 (gray), 2 (RGB), 4
  (gray+alpha) or 6 (RGBA), interlaced or not, with libpng; the iCCP profile, eXIf block and tRNS
  colour key are read from their chunks here (the caller turns the key into alpha, so the samples
  come back without the alpha channel libpng makes from it).
* :func:`write_png` encodes uint8 or uint16 (H, W), (H, W, 1|2|3|4) arrays with libpng and adds an
  iCCP profile and an eXIf block after the header. Without metadata the same samples always give the
  same bytes.

This is the one PNG codec of the package: :mod:`cmddcli.photo.io` (photos) and
:mod:`cmddcli.photo.arrays` (data sets) both use it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np

__all__ = ["COLOUR_CHUNKS", "SIGNATURE", "PngError", "PngInfo", "ancillary", "chunk", "png_info", "read_png", "write_png"]

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
    dpi: Optional[tuple] = None  # pHYs in pixels per metre, as dots per inch (None: no pHYs, or no unit)
    colour: dict = field(default_factory=dict)  # gAMA / cHRM / sRGB chunk bodies by chunk type
    notes: list = field(default_factory=list)  # what a lenient reader skipped (bad CRC, data after IEND)


COLOUR_CHUNKS = (b"gAMA", b"cHRM", b"sRGB")  # carried from a PNG input to a PNG output as they are


def chunk(ctype: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body, CRC."""
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def _chunks(data: bytes, notes: Optional[list] = None) -> Iterator[tuple[bytes, bytes]]:
    """(type, body) of each chunk up to IEND. With ``notes`` (a list): ancillary chunks with a bad CRC
    are skipped and data after IEND is ignored, each with a note, as libpng does by default."""
    if not data.startswith(SIGNATURE):
        raise PngError("not a PNG file")
    pos = len(SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise PngError("truncated PNG file")
        crc = data[pos + 8 + length : pos + 12 + length]
        pos += 12 + length
        if notes is not None and len(crc) == 4 and ctype[:1].islower() and \
                struct.unpack(">I", crc)[0] != zlib.crc32(ctype + body) & 0xFFFFFFFF:
            notes.append(f"bad CRC in the ancillary {ctype.decode('latin-1')!r} chunk: chunk ignored")
            continue
        yield ctype, body
        if ctype == b"IEND":
            if notes is not None and pos < len(data):
                notes.append(f"{len(data) - pos} byte(s) after the IEND chunk ignored")
            return
    raise PngError("truncated PNG file (no IEND chunk)")


def png_info(data: bytes) -> PngInfo:
    """Header fields of a PNG held in ``data`` (reads only up to IHDR)."""
    if not data.startswith(SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 29:
        raise PngError("not a PNG file")
    w, h, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return PngInfo(w, h, depth, ctype, bool(interlace))


def ancillary(data: bytes) -> PngInfo:
    """What :func:`_metadata` reads (print resolution, colour chunks, notes on skipped damage) for a
    PNG another decoder reads; never raises (an unreadable PNG gives an empty PngInfo)."""
    try:
        return _metadata(data, check=False)
    except (PngError, struct.error, ValueError):
        return PngInfo(0, 0, 0, 0, False)


def _metadata(data: bytes, check: bool = True) -> PngInfo:
    """Header plus iCCP / eXIf / tRNS / pHYs / gAMA / cHRM / sRGB, walking the chunks (the pixels are
    left to libpng). ``check``: refuse what this codec cannot decode."""
    info = None
    has_idat = False
    notes: list = []
    for ctype, body in _chunks(data, notes):
        if ctype == b"IHDR":
            if len(body) < 13:
                raise PngError("corrupt PNG header (IHDR chunk too short)")
            w, h, depth, color, _c, _f, interlace = struct.unpack(">IIBBBBB", body[:13])
            info = PngInfo(w, h, depth, color, bool(interlace), notes=notes)
        elif info is None:
            continue
        elif ctype == b"IDAT":
            has_idat = True
        elif ctype == b"iCCP":
            name_end = body.find(b"\x00")
            try:
                info.icc_profile = zlib.decompress(body[name_end + 2 :]) if name_end > 0 else None
            except zlib.error:
                info.icc_profile = None  # a broken profile costs the profile, not the image
        elif ctype == b"pHYs" and len(body) == 9:
            x, y, unit = struct.unpack(">IIB", body)
            if unit == 1 and x > 0 and y > 0:
                info.dpi = (round(x * 0.0254, 2), round(y * 0.0254, 2))
        elif ctype in COLOUR_CHUNKS and len(body) == {b"gAMA": 4, b"cHRM": 32, b"sRGB": 1}[ctype]:
            info.colour[ctype.decode()] = bytes(body)
        elif ctype == b"eXIf":
            info.exif = bytes(body)
        elif ctype == b"tRNS" and info.color_type in (0, 2):
            n = 1 if info.color_type == 0 else 3
            if len(body) >= 2 * n:
                info.transparency = struct.unpack(f">{n}H", body[: 2 * n])
    if info is None:
        raise PngError("PNG without an IHDR chunk")
    if not check:
        return info
    if info.color_type not in _CHANNELS or info.bit_depth not in (8, 16):
        raise PngError(f"PNG colour type {info.color_type} at {info.bit_depth} bits is not handled here")
    if not has_idat:
        raise PngError("PNG without image data")
    return info


def read_png(data: bytes) -> tuple[np.ndarray, PngInfo]:
    """Decode a PNG held in ``data``: (H, W) or (H, W, C) uint8 / uint16, and its header + metadata.
    Raises PngError for anything that is not a readable 8/16-bit gray / RGB (+alpha) PNG."""
    import imagecodecs

    info = _metadata(data)
    try:
        arr = imagecodecs.png_decode(data)
    except Exception as e:  # noqa: BLE001 - imagecodecs.PngError (RuntimeError) or ValueError
        raise PngError(f"corrupt PNG image data ({e})") from e
    ch = _CHANNELS[info.color_type]
    if info.transparency is not None and arr.ndim == 3 and arr.shape[2] == ch + 1:
        arr = arr[..., :ch]  # libpng turned the colour key into alpha; the caller does that itself
    if ch == 1 and arr.ndim == 3:
        arr = arr[..., 0]
    if arr.shape[:2] != (info.height, info.width):
        raise PngError(f"corrupt PNG image data (decoded {arr.shape[:2]}, header {info.height}x{info.width})")
    return np.ascontiguousarray(arr), info


def write_png(
    arr: np.ndarray,
    icc_profile: Optional[bytes] = None,
    exif: Optional[bytes] = None,
    compress_level: int = 6,
    dpi: Optional[tuple] = None,
    colour: Optional[dict] = None,
) -> bytes:
    """Encode (H, W) / (H, W, 1|2|3|4) uint8 or uint16 samples as PNG bytes (zlib ``compress_level``),
    with an iCCP profile, an eXIf block, a pHYs print resolution (``dpi``) and ``colour`` chunks
    (gAMA / cHRM / sRGB bodies by chunk type) when given."""
    import imagecodecs

    arr = np.asarray(arr)
    if arr.dtype not in (np.uint8, np.uint16):
        raise PngError(f"PNG samples must be uint8 or uint16, not {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (2, 3, 4)) or 0 in arr.shape[:2]:
        raise PngError(f"cannot write an image of shape {arr.shape} as PNG")
    data = bytes(imagecodecs.png_encode(np.ascontiguousarray(arr), level=compress_level))
    extra = b""
    for ctype, body in (colour or {}).items():
        if ctype.encode() in COLOUR_CHUNKS:
            extra += chunk(ctype.encode(), body)
    if dpi and all(0 < round(d / 0.0254) < 2**31 for d in dpi):
        extra += chunk(b"pHYs", struct.pack(">IIB", round(dpi[0] / 0.0254), round(dpi[1] / 0.0254), 1))
    if icc_profile:
        extra += chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile))
    if exif:
        if exif.startswith(b"Exif\x00\x00"):
            exif = exif[6:]
        extra += chunk(b"eXIf", exif)
    if not extra:
        return data
    end_of_ihdr = len(SIGNATURE) + 8 + 13 + 4
    return data[:end_of_ihdr] + extra + data[end_of_ihdr:]
