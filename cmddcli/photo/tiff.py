"""TIFF through tifffile: reading every full-resolution page (8/16-bit, float, planar, alpha,
associated alpha), writing every page, with the IFD0 text tags and, through exiv2, the Exif sub-IFD."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from ..errors import InputError
from . import meta
from .core import MAX_PIXELS, Photo, SizeLimit, encode_samples, one_line, photo_from_samples, pillow_bomb_check_off
from .pillow import read_pillow

log = logging.getLogger(__name__)

_TIFF_TEXT_TAGS = (270, 271, 272, 306, 315, 33432)  # description, make, model, datetime, artist, copyright


def read_tiff(path: Path, limit: Optional[SizeLimit] = None, pending: Optional[list] = None) -> Photo:
    """Every full-resolution page (reduced-resolution and mask pages are skipped); the first is the
    Photo, the others go to ``Photo.pages``."""
    import tifffile

    limit = limit or SizeLimit(path, MAX_PIXELS)
    pending = [] if pending is None else pending
    decoded = []
    try:
        with tifffile.TiffFile(path) as tif:
            pages = [p for p in tif.pages if not (getattr(p, "is_reduced", False) or getattr(p, "is_mask", False))]
            skipped = len(tif.pages) - len(pages)
            if not pages:
                pages = [tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]]
            for page in pages:  # every header first: nothing is decoded past the limit
                limit.check(int(page.imagewidth), int(page.imagelength))
            for page in pages:
                decoded.append(_tiff_page(page))
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many types; fall back to Pillow
        try:
            return read_pillow(path, SizeLimit(path, limit.max_pixels), pending)
        except InputError as pe:
            if "too large" in pe.reason:
                raise
            why = "no readable image page" if isinstance(e, (IndexError, KeyError)) else one_line(e)
            raise InputError(path, f"corrupt or unsupported TIFF ({why})") from e
    if skipped:
        log.info("%s: %d reduced-resolution / mask page(s) skipped", path, skipped)
    exif = None
    try:
        with pillow_bomb_check_off(), Image.open(path) as im:
            exif = im.getexif()
    except Exception:  # noqa: BLE001 - Pillow cannot parse every TIFF; the pixels came from tifffile
        exif = None
    photos = []
    for i, (arr, photometric, icc, premultiplied) in enumerate(decoded):
        if arr is None:  # CMYK, YCbCr, CIELab...: let Pillow convert (first page only)
            if i == 0:
                try:
                    return read_pillow(path, SizeLimit(path, limit.max_pixels), pending)
                except InputError as e:
                    raise InputError(path, f"unsupported TIFF photometric interpretation {photometric}") from e
            pending.append(f"page {i + 1} (photometric {photometric}) cannot be decoded here and is dropped")
            continue
        page_photo = photo_from_samples(path, arr, exif if i == 0 else None, icc, "tiff", premultiplied)
        page_photo.sample_type = "bool" if arr.dtype == np.bool_ else arr.dtype.name
        photos.append(page_photo)
    photo = photos[0]
    photo.pages = photos[1:]
    photo.dpi = _tiff_dpi(path)
    return photo


def _tiff_dpi(path: Path) -> Optional[tuple]:
    """XResolution / YResolution of the first page in dots per inch (ResolutionUnit inch or cm), or None."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            unit = int(tags[296].value) if 296 in tags else 2
            x, y = (tags[t].value for t in (282, 283))
            f = {2: 1.0, 3: 2.54}[unit]
            x, y = (float(v[0]) / float(v[1]) if isinstance(v, tuple) else float(v) for v in (x, y))
            x, y = round(x * f, 2), round(y * f, 2)
    except Exception:  # noqa: BLE001 - no or malformed resolution tags: no print resolution
        return None
    return (x, y) if 0 < x < 1e6 and 0 < y < 1e6 else None


def _tiff_page(page) -> tuple:
    """(samples or None when Pillow must convert them, photometric, ICC profile, premultiplied?)."""
    photometric = int(page.photometric)
    icc_tag = page.tags.get(34675)
    icc = bytes(icc_tag.value) if icc_tag is not None else None
    if photometric not in (0, 1, 2, 3):
        return None, photometric, icc, False
    arr = page.asarray()
    if int(page.planarconfig) == 2 and arr.ndim == 3:
        arr = np.moveaxis(arr, 0, -1)  # (S, H, W) -> (H, W, S)
    if photometric == 0 and arr.dtype == np.bool_:  # min-is-white bilevel: 0 is white paper
        arr = ~arr
    elif photometric == 0 and np.issubdtype(arr.dtype, np.unsignedinteger):  # min-is-white
        arr = np.iinfo(arr.dtype).max - arr
    elif photometric == 3 and page.colormap is not None:  # palette
        arr = np.moveaxis(page.colormap[:, arr], 0, -1).astype(np.uint16)
    extra = tuple(int(x) for x in (getattr(page, "extrasamples", None) or ()))
    premultiplied = bool(extra) and extra[0] == 1  # ExtraSamples 1 = associated alpha
    return arr, photometric, icc, premultiplied


# Sample types a TIFF holds that the library's own outputs (uint8, uint16, float32) do not: a TIFF output
# of such a source gets its type back (integers rounded and clipped to the type's range).
_OTHER_TYPES = frozenset({"uint32", "int8", "int16", "int32", "float16", "float64"})
_DEPTH_TYPE = {8: "uint8", 16: "uint16", 32: "float32"}


def _stored_type(page: Photo, samples: np.ndarray, depth: int, name: str, warn: bool) -> np.ndarray:
    """``samples`` (uint8 / uint16 / float32 from :func:`encode_samples`) in the source's own sample type
    when the output is written at the source's depth; otherwise a warning saying what they became."""
    src = page.sample_type
    if src is None or src == _DEPTH_TYPE[depth]:
        return samples
    if src in _OTHER_TYPES and depth == 32:
        dtype = np.dtype(src)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            return np.clip(np.round(samples.astype(np.float64)), info.min, info.max).astype(dtype)
        return samples.astype(dtype)
    if warn:
        was = "1-bit" if src == "bool" else src
        page.warn(f"{name}: {was} samples written as {depth}-bit "
                  f"{'float' if depth == 32 else 'integer'} ({_DEPTH_TYPE[depth]}) samples")
    return samples


def write_tiff(tmp: Path, photo: Photo, depth: int, name: str = "", icc: Optional[bytes] = None,
               dpi: Optional[tuple] = None) -> None:
    """Every page into one TIFF (zlib; ``icc`` and ``dpi`` for the first page, default the photo's own),
    then the Exif sub-IFD and GPS added with exiv2."""
    import tifffile

    extratags = []
    if photo.exif is not None:
        for tag in _TIFF_TEXT_TAGS:
            value = photo.exif.get(tag)
            if isinstance(value, str) and value.strip() and value.isascii():
                extratags.append((tag, "s", 0, value.strip("\x00"), True))
    with tifffile.TiffWriter(tmp) as tw:
        for i, page in enumerate([photo, *photo.pages]):
            assoc = page.premultiplied and page.alpha is not None
            samples = _stored_type(page, encode_samples(page, depth, True, premultiply=assoc, where=name), depth, name,
                                   warn=i == 0)
            ch = 1 if samples.ndim == 2 else samples.shape[-1]
            tw.write(
                samples,
                photometric="minisblack" if ch in (1, 2) else "rgb",
                extrasamples=(["assocalpha"] if assoc else ["unassalpha"]) if ch in (2, 4) else None,
                compression="zlib",
                predictor=samples.dtype.kind in "ui",
                iccprofile=(icc or page.icc_profile if i == 0 else page.icc_profile) or None,
                resolution=(dpi or page.dpi) if (dpi or page.dpi) else None,
                resolutionunit="INCH" if (dpi or page.dpi) else None,
                metadata=None,
                software="cmdd",
                extratags=extratags if i == 0 else [],
                subfiletype=2 if photo.pages else 0,  # 2: one page of a multi-page image
            )
    if photo.exif is None:
        return
    if meta.exiv2() is None:
        photo.warn(f"{name}: Exif sub-IFD (exposure, ISO, lens, ...) and GPS not written: {meta.unavailable_reason()}")
        return
    try:
        tags = meta.exif_to_tags(photo.exif)
        if tags:
            meta.write_exif_tags(tmp, tags)
    except Exception as e:  # noqa: BLE001 - exiv2 failing costs the Exif sub-IFD, not the image
        photo.warn(f"{name}: Exif sub-IFD not written (exiv2: {one_line(e)})")
