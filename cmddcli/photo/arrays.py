"""Plain sample arrays for data sets: any image file in as HxWx3 ``uint8`` / ``uint16``, PNG out.

Where :mod:`cmddcli.photo.io` reads a *photo* (orientation, alpha, ICC, EXIF, RAW, pages), data sets
need only the samples at their stored depth: DPDD is distributed as 16-bit RGB PNG and the crops must
stay 16-bit (Pillow cannot hold 16-bit colour, and we do not want OpenCV as a dependency). PNGs go
through :mod:`cmddcli.photo.png` (libpng via imagecodecs); other files through Pillow or tifffile.

:func:`to_float` / :func:`from_float` (from :mod:`cmddcli.photo.samples`, the package's one
conversion between 8/16-bit samples and float32 in [0, 1]) are re-exported for data sets.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..atomic import atomic_write_bytes
from . import png
from .io import IMAGE_EXTENSIONS, check_readable
from .samples import from_float, to_float  # noqa: F401 - part of this module's API

PNG_SIGNATURE = png.SIGNATURE
# Files a data set may hold: the photo formats of cmdd deblur, plus BMP (some data sets ship it).
DATASET_EXTENSIONS = IMAGE_EXTENSIONS | {".bmp"}


# --------------------------------------------------------------------------------------------------
# writing


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """Encode an HxW or HxWx{1,2,3,4} ``uint8``/``uint16`` array as PNG bytes (no metadata, so the
    same pixels always give the same bytes)."""
    a = np.asarray(image)
    if a.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"encode_png needs uint8 or uint16, got {a.dtype}")
    if a.ndim not in (2, 3):
        raise ValueError(f"encode_png needs HxW or HxWxC (C in 1..4), got shape {a.shape}")
    return png.write_png(a, compress_level=level)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to ``path`` through a temporary file in the same folder and ``os.replace``."""
    atomic_write_bytes(path, data, fsync=False)


def write_png(path: str | os.PathLike, image: np.ndarray, level: int = 6) -> bytes:
    """Encode and write atomically; returns the bytes written (for checksums)."""
    data = encode_png(image, level)
    write_atomic(path, data)
    return data


# --------------------------------------------------------------------------------------------------
# reading


def png_header(path: str | os.PathLike) -> tuple[int, int, int, int] | None:
    """(width, height, bit_depth, color_type) from a PNG's IHDR, or None if it is not a PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(33)
    except OSError:
        return None
    if len(head) < 33:
        return None
    try:
        info = png.png_info(head)
    except png.PngError:
        return None
    return info.width, info.height, info.bit_depth, info.color_type


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) without decoding the pixels."""
    hdr = png_header(path)
    if hdr is not None:
        return hdr[0], hdr[1]
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad input file
        raise InputError(path, f"cannot read image header ({e})") from e


def read_image(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """Read an image as HxWx3 ``uint8`` or ``uint16`` (bit depth kept). Grey is replicated to RGB,
    alpha is dropped. Raises :class:`InputError` for missing or unreadable files."""
    path = Path(path)
    check_readable(path)  # missing, a folder, unreadable or empty: the same reasons as cmdd deblur gives
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            a = tifffile.imread(path)
        else:
            a = _read_pillow(path)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad input file
        raise InputError(path, f"cannot decode image ({e})") from e
    return _as_rgb(a, path) if channels == 3 else a


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    hdr = png_header(path)
    if hdr is not None and hdr[2] == 16 and hdr[3] in (2, 6):
        return png.read_png(path.read_bytes())[0]
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(im).astype(np.uint16)
        if im.mode == "I":  # 16-bit grey (with or without alpha) is decoded as 32-bit "I"
            return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        if im.mode not in ("RGB", "RGBA", "L", "LA"):
            im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
        return np.asarray(im)


def _as_rgb(a: np.ndarray, path: Path) -> np.ndarray:
    if a.dtype not in (np.uint8, np.uint16):
        if np.issubdtype(a.dtype, np.floating):
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            if bad:  # NaN would score as 0 and +-inf as 1: refuse instead of scoring made-up values
                raise InputError(path, f"{bad} non-finite sample(s) (NaN or +-inf) of {a.size}: not a usable image")
            a = from_float(a, bits=16)
        else:
            raise InputError(path, f"unsupported sample type {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise InputError(path, f"unsupported image shape {a.shape}")
    c = a.shape[2]
    if c in (1, 2):
        a = np.repeat(a[..., :1], 3, axis=2)
    elif c >= 3:
        a = a[..., :3]
    return np.ascontiguousarray(a)
