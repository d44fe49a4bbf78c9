"""Reading with Pillow: JPEG, WebP, 8-bit PNG and whatever else Pillow opens (palette, CMYK through
its ICC profile, tRNS colour keys, premultiplied alpha); also the fallback for TIFFs tifffile cannot undo."""

from __future__ import annotations

import io
import struct
import threading
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import InputError
from .core import (MAX_PIXELS, Photo, SizeLimit, one_line, photo_from_samples, pillow_bomb_check_off, png_bit_depth,
                   srgb_icc_profile, with_colour_key)
from .samples import from_float


_LENIENT = threading.Lock()


def read_pillow(path: Path, limit: Optional[SizeLimit] = None, pending: Optional[list] = None) -> Photo:
    """Decode with Pillow. A file Pillow refuses strictly but decodes with its tolerance of damaged
    files (``ImageFile.LOAD_TRUNCATED_IMAGES``: a truncated JPEG, a PNG ancillary chunk with a bad CRC,
    as libjpeg-turbo and libpng accept them with a warning) is read that way, with a warning."""
    limit = limit or SizeLimit(path, MAX_PIXELS)
    pending = [] if pending is None else pending
    before = limit.total
    try:
        return _read_pillow(path, limit, pending)
    except InputError as e:
        if not getattr(e, "lenient_may_help", False):
            raise
        strict = e
    limit.total = before
    with _LENIENT:  # Pillow's switch is global: one lenient decode at a time
        old = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            photo = _read_pillow(path, limit, pending)
        except InputError:
            raise strict from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = old
    why = strict.reason if "unrecognised" not in strict.reason else "refused by a strict reading"
    photo.warn(f"decoder: damaged file ({why}); decoded what it holds (a truncated image is filled in gray)")
    return photo


def _read_pillow(path: Path, limit: SizeLimit, pending: list) -> Photo:
    try:
        with pillow_bomb_check_off():
            im = Image.open(path)  # reads the header only
        with im:
            limit.check(*im.size)  # before any pixel is decoded
            im.load()
            fmt = (im.format or "").lower()
            frames = int(getattr(im, "n_frames", 1) or 1)
            if frames > 1:
                pending.append(f"{fmt.upper()} file has {frames} frames; only the first is deblurred and written")
            fmt = "jpeg" if fmt == "mpo" else fmt
            icc = im.info.get("icc_profile")
            try:
                exif = im.getexif()
            except Exception:  # noqa: BLE001 - unreadable EXIF costs only the metadata
                exif = None
            if im.mode == "CMYK":
                im, icc = _cmyk_to_srgb(im, icc, pending)
            arr = _pillow_array(im)
            key = im.info.get("transparency")
            if key is not None and im.mode in ("1", "L", "RGB", "I", "I;16", "I;16B", "I;16L", "I;16N"):
                arr = with_colour_key(arr, _pillow_key(path, im, key))
            premultiplied = im.mode in ("RGBa", "La")
            dpi = _dpi(im.info.get("dpi"))
    except InputError:
        raise
    except UnidentifiedImageError as e:
        twelve = _twelve_bit_jpeg(path, limit)
        if twelve is not None:
            return twelve
        raise _lenient(InputError(path, "not an image (unrecognised format)")) from e
    except Image.DecompressionBombError as e:
        raise InputError(path, f"image too large ({e})") from e
    except MemoryError as e:
        raise InputError(path, "not enough memory to decode it") from e
    except Exception as e:  # noqa: BLE001 - OSError, SyntaxError, ValueError, struct.error, EOFError, TypeError...
        raise _lenient(InputError(path, f"corrupt or truncated image ({one_line(e)})")) from e
    photo = photo_from_samples(path, arr, exif, icc, fmt, premultiplied=False)
    photo.dpi = dpi
    photo.premultiplied = premultiplied and photo.alpha is not None  # Pillow's convert un-premultiplied it
    return photo


def _lenient(e: InputError) -> InputError:
    e.lenient_may_help = not ImageFile.LOAD_TRUNCATED_IMAGES
    return e


def _dpi(value) -> Optional[tuple]:
    """Pillow's ``info["dpi"]`` as two positive finite numbers (rounded to 0.01), or None."""
    try:
        x, y = (round(float(v), 2) for v in value)
    except (TypeError, ValueError):
        return None
    return (x, y) if 0 < x < 1e6 and 0 < y < 1e6 else None


def _twelve_bit_jpeg(path: Path, limit: SizeLimit) -> Optional[Photo]:
    """A 12-bit JPEG (Pillow reads 8-bit JPEG only) decoded with imagecodecs' libjpeg-turbo, with its
    EXIF, ICC profile and JFIF density; None when the file is no such JPEG."""
    with open(path, "rb") as f:
        data = f.read()
    seg = jpeg_segments(data)
    if seg is None or seg["precision"] != 12:
        return None
    try:
        import imagecodecs

        limit.check(seg["width"], seg["height"])
        arr = imagecodecs.jpeg8_decode(data)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - imagecodecs.Jpeg8Error and others
        raise InputError(path, f"corrupt 12-bit JPEG ({one_line(e)})") from e
    x = (np.asarray(arr, dtype=np.float32) / 4095.0).clip(0.0, 1.0)
    exif = None
    if seg["exif"]:
        try:
            exif = Image.Exif()
            exif.load(seg["exif"])
        except Exception:  # noqa: BLE001 - unreadable EXIF costs only the metadata
            exif = None
    photo = photo_from_samples(path, from_float(x, 16), exif, seg["icc"], "jpeg")
    photo.dpi = seg["dpi"]
    return photo


def jpeg_segments(data: bytes) -> Optional[dict]:
    """Header facts of a JPEG from its markers: precision, size, EXIF, ICC profile, JFIF dpi; None when
    ``data`` is no JPEG with a frame header."""
    if not data.startswith(b"\xff\xd8"):
        return None
    out: dict = {"exif": None, "icc": None, "dpi": None}
    icc_parts: dict = {}
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        (n,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        body = data[pos + 4 : pos + 2 + n]
        if marker == 0xE0 and body[:5] == b"JFIF\x00" and len(body) >= 12 and body[7] in (1, 2):
            xd, yd = struct.unpack(">HH", body[8:12])
            f = 1.0 if body[7] == 1 else 2.54
            out["dpi"] = _dpi((xd * f, yd * f))
        elif marker == 0xE1 and body[:6] == b"Exif\x00\x00":
            out["exif"] = body
        elif marker == 0xE2 and body[:12] == b"ICC_PROFILE\x00" and len(body) > 14:
            icc_parts[body[12]] = body[14:]
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and len(body) >= 5:
            out["precision"] = body[0]
            out["height"], out["width"] = struct.unpack(">HH", body[1:5])
            out["icc"] = b"".join(icc_parts[k] for k in sorted(icc_parts)) or None
            return out
        elif marker == 0xDA:
            return None
        pos += 2 + n
    return None


def _pillow_key(path: Path, im: Image.Image, key):
    """The tRNS colour key in the units of :func:`_pillow_array`'s samples. Pillow scales 1/2/4-bit
    gray samples to 0..255 but leaves the key of 2/4-bit files unscaled; bilevel keys come as 0/255."""
    if im.mode == "1":
        return 255 if key else 0
    if im.mode == "L" and isinstance(key, int) and (im.format or "").upper() == "PNG":
        with open(path, "rb") as f:
            bits = png_bit_depth(f.read(32))
        if bits in (2, 4):
            return key * 255 // (2**bits - 1)
    return key


def _cmyk_to_srgb(im: Image.Image, icc: Optional[bytes], pending: list) -> tuple[Image.Image, Optional[bytes]]:
    """A CMYK image as sRGB through its ICC profile (and the sRGB profile), or with Pillow's plain
    formula (no profile) when it has none or an unusable one - with a warning that says which."""
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            return ImageCms.profileToProfile(im, src, dst, outputMode="RGB"), srgb_icc_profile()
        except Exception as e:  # noqa: BLE001 - littleCMS rejects broken profiles in many ways
            pending.append(f"CMYK image: its ICC profile is unusable ({one_line(e)}), so it is dropped and "
                           "the colours are converted to RGB with a plain formula")
            return im.convert("RGB"), None
    pending.append("CMYK image without an ICC profile: converted to RGB with a plain formula (colours approximate)")
    return im.convert("RGB"), None


def _pillow_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        return np.asarray(im)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16)
    if mode == "I":
        a = np.asarray(im)
        if a.min() >= 0 and a.max() <= 65535:
            return a.astype(np.uint16)
        return np.clip(a.astype(np.float32) / 65535.0, 0, 1)
    if mode == "F":
        return np.asarray(im).astype(np.float32)
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    if mode in ("RGBa", "La"):
        return np.asarray(im.convert(mode.upper()))
    return np.asarray(im.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, RGBX, ...
