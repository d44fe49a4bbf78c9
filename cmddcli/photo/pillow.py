"""Reading with Pillow: JPEG, WebP, 8-bit PNG and whatever else Pillow opens (palette, CMYK through
its ICC profile, tRNS colour keys, premultiplied alpha); also the fallback for TIFFs tifffile cannot undo."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from .core import (MAX_PIXELS, Photo, SizeLimit, one_line, photo_from_samples, pillow_bomb_check_off, png_bit_depth,
                   srgb_icc_profile, with_colour_key)


def read_pillow(path: Path, limit: Optional[SizeLimit] = None, pending: Optional[list] = None) -> Photo:
    limit = limit or SizeLimit(path, MAX_PIXELS)
    pending = [] if pending is None else pending
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
    except UnidentifiedImageError as e:
        raise InputError(path, "not an image (unrecognised format)") from e
    except Image.DecompressionBombError as e:
        raise InputError(path, f"image too large ({e})") from e
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        raise InputError(path, f"corrupt or truncated image ({one_line(e)})") from e
    photo = photo_from_samples(path, arr, exif, icc, fmt, premultiplied=False)
    photo.premultiplied = premultiplied and photo.alpha is not None  # Pillow's convert un-premultiplied it
    return photo


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
