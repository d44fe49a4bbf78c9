"""Reading and writing photos: JPEG, PNG (8/16-bit), TIFF (8/16-bit, float), WebP, camera RAW.

Inside the library an image is a :class:`Photo`: upright float32 RGB in [0, 1] plus what is needed
to write it back the way it came (bit depth, gray or colour, alpha, ICC profile, EXIF).

Who decodes what:

* JPEG, WebP, 8-bit PNG and anything else Pillow opens: Pillow (:mod:`.pillow`).
* 16-bit PNG: :mod:`.png` (libpng through imagecodecs; Pillow reduces 16-bit colour PNGs to 8 bits).
* TIFF: tifffile (:mod:`.tiff`; 8/16-bit, float, planar, alpha, every full-resolution page), Pillow as a fallback
  for compressions tifffile cannot undo without imagecodecs (JPEG-in-TIFF, ...).
* RAW: rawpy, developed as in :mod:`.raw`; its camera metadata read with exiv2 (:mod:`.meta`).

Size limit: every decoder checks the size in the file's header against ``max_pixels`` (default
:data:`MAX_PIXELS`, 180 MP; the pages of a multi-page TIFF count together) *before* decoding, and
refuses a larger file with an error that states the limit.

What is kept and what is not:

* Pages: every full-resolution page of a TIFF is read (reduced-resolution and mask pages are
  skipped); a TIFF output holds them all, other formats hold one image, so there the further pages
  are dropped with a warning. Further frames of animated WebP / GIF / MPO files are dropped with a
  warning.
* Range: integer samples map to [0, 1]. Floating-point samples keep their range: the network sees
  them scaled to [0, 1] (``Photo.value_range``) and a float TIFF output gets the original range
  back; an 8/16-bit output of such a file clips to [0, 1] with a warning giving the clipped fraction.
* Transparency: alpha channels, palette transparency and tRNS colour keys (gray / RGB PNG, 8 and
  16 bit) become alpha. Associated (premultiplied) alpha is un-premultiplied on read; a TIFF output
  of such a file is premultiplied again and labelled associated, every other output is straight.

Metadata policy:

* EXIF orientation is applied on read and written as 1 (see :func:`.meta.apply_orientation`).
* EXIF is carried by every output format: IFD0 descriptive tags (Make, Model, DateTime, Artist,
  Copyright, ImageDescription), the Exif sub-IFD (exposure, ISO, focal length, lens, ...) and GPS;
  layout tags, the thumbnail IFD, MakerNote, the interoperability pointer and XMP are dropped.
  JPEG/PNG/WebP get it through Pillow / :mod:`.png`; TIFF outputs get the IFD0 tags from tifffile
  and the Exif sub-IFD and GPS from exiv2. RAW files' EXIF is read with exiv2 and completed from
  LibRaw (:mod:`.meta`). Without pyexiv2, RAW outputs carry no camera metadata and TIFF outputs
  only the IFD0 tags, with a warning.
* The ICC profile is copied to every output format (PNG iCCP, JPEG/WebP APP2/ICCP, TIFF tag 34675).
  RAW developments get an sRGB profile (none when developed linear). A CMYK input is converted to
  sRGB through its ICC profile (and gets an sRGB profile); without a usable profile it is converted
  with Pillow's plain formula, with a warning saying so.
* Alpha is passed through (requantised only when the bit depth changes); JPEG has no alpha, so it
  is dropped there with a warning.
* Whatever could not be kept is logged as a warning and listed in ``Photo.warnings`` (which the
  batch runner copies into its summary).
* Gray inputs are processed as RGB and written back gray (mean of the three output channels).
"""

from __future__ import annotations

import logging
import struct
import warnings as _warnings
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from ..atomic import atomic_path
from ..errors import InputError
from . import meta, png
from .core import (MAX_PIXELS, Photo, SizeLimit, encode_samples, one_line, photo_from_samples, png_bit_depth,
                   srgb_icc_profile, with_colour_key)
from .pillow import read_pillow
from .raw import RAW_EXTENSIONS, RawSettings, develop, is_raw
from .tiff import read_tiff, write_tiff

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp"})


SUPPORTED_EXTENSIONS = IMAGE_EXTENSIONS | RAW_EXTENSIONS
# output extension -> writer format
OUTPUT_FORMATS = {"png": "png", "tif": "tiff", "tiff": "tiff", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}
EIGHT_BIT_FORMATS = frozenset({"jpeg", "webp"})  # hold 8 bits per sample: written 8-bit whatever is asked
_MAX_SIDE = {"jpeg": 65535, "webp": 16383}  # the formats' own limits on width and height
JPEG_QUALITY = 95  # JPEG and WebP outputs: quality 95, JPEG without chroma subsampling (4:4:4)


def is_supported(path: str | Path) -> bool:
    """Whether a file's extension is one `cmdd deblur` picks up from folders."""
    return Path(path).suffix.lower() in SUPPORTED_EXTENSIONS


def default_output_suffix(path: str | Path) -> str:
    """Output extension when none is asked for: the input's own, RAW -> '.tif', others -> '.png'."""
    suffix = Path(path).suffix
    if suffix.lower() in RAW_EXTENSIONS:
        return ".tif"
    if suffix.lower() in IMAGE_EXTENSIONS:
        return suffix
    return ".png"


# ---------------------------------------------------------------------------------------- reading


def read_photo(path: str | Path, raw_settings: Optional[RawSettings] = None,
               max_pixels: Optional[int] = MAX_PIXELS) -> Photo:
    """Decode one file (RAW developed with ``raw_settings``, default ``RawSettings()``).

    Files whose header gives more than ``max_pixels`` pixels (None or 0: no limit) are refused
    before decoding. Raises InputError (one line: why) for anything that is not a usable image.
    """
    path = Path(path)
    raw_settings = raw_settings or RawSettings()
    limit = SizeLimit(path, max_pixels)
    head = check_readable(path)

    pending: list[str] = []  # warnings raised before the Photo exists
    with _warnings.catch_warnings(record=True) as caught:  # decoders' own warnings: kept with the file's name
        _warnings.simplefilter("always")
        if is_raw(path):
            photo = _read_raw(path, raw_settings, limit, pending)
        elif head.startswith(png.SIGNATURE) and png_bit_depth(head) == 16:
            info = png.png_info(head)
            limit.check(info.width, info.height)
            photo = _read_png_full_depth(path)
        elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            photo = read_tiff(path, limit, pending)
        else:
            photo = read_pillow(path, limit, pending)
        if head.startswith(png.SIGNATURE):  # print resolution, colour chunks, damage libpng skips
            extra = png.ancillary(_read_bytes(path))
            photo.dpi = photo.dpi or extra.dpi
            photo.png_colour = extra.colour
            pending.extend(f"decoder: {n}" for n in extra.notes if f"decoder: {n}" not in pending)
    for w in caught:
        text = " ".join(str(w.message).split())
        if text and text not in pending:
            pending.append(f"decoder: {text}")
    photo.source = path
    for page in photo.pages:
        page.source, page.warnings = path, photo.warnings
    for message in pending:
        photo.warn(message)
    for p in (photo, *photo.pages):
        if not np.isfinite(p.rgb).all():
            p.rgb = np.nan_to_num(p.rgb, nan=0.0, posinf=1.0, neginf=0.0)
    if photo.raw is not None and float(photo.rgb.max(initial=0.0)) <= 0.0:  # a RAW LibRaw could not develop
        raise InputError(path, "decodes to an all-black image (no image data)")
    return photo


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror or e})") from e


def check_readable(path: Path) -> bytes:
    """The checks before any decoding: the file exists, is not a folder, can be read and is not empty.
    Returns its first 32 bytes. Raises InputError (one line: why). The batch runner calls it before it
    loads the network, so a folder of missing files fails at once (and ``--dry-run`` reports them)."""
    try:  # exists() and is_dir() raise too, for a name too long or a folder without permission
        if not path.exists():
            if path.is_symlink():
                raise InputError(path, "a symbolic link that leads nowhere (its target is missing, or a loop)")
            raise InputError(path, "file not found")
        if path.is_dir():
            raise InputError(path, "is a folder, not an image")
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror or e})") from e
    if size == 0:
        raise InputError(path, "empty file (0 bytes)")
    return head


def _read_png_full_depth(path: Path) -> Photo:
    try:
        arr, info = png.read_png(_read_bytes(path))
    except (png.PngError, ValueError, struct.error) as e:
        raise InputError(path, one_line(e)) from e
    if info.transparency is not None:
        arr = with_colour_key(arr, info.transparency)
    exif = None
    if info.exif:
        try:
            exif = Image.Exif()
            exif.load(b"Exif\x00\x00" + info.exif)
        except Exception:  # noqa: BLE001 - unreadable EXIF costs only the metadata
            exif = None
    return photo_from_samples(path, arr, exif, info.icc_profile, "png")


def _read_raw(path: Path, settings: RawSettings, limit: Optional[SizeLimit] = None,
              pending: Optional[list] = None) -> Photo:
    limit = limit or SizeLimit(path, MAX_PIXELS)
    pending = [] if pending is None else pending
    dev = develop(path, settings, check_size=limit.check)  # upright uint16 (H, W, 3)
    rgb = dev.rgb.astype(np.float32) / 65535.0
    record = {**settings.describe(), "half_size_applied": dev.half_size_applied}
    if settings.half_size and not dev.half_size_applied:
        pending.append("--raw-half-size was ignored by LibRaw for this file (e.g. a LinearRaw DNG, already "
                       "demosaiced): developed at full size")
    exif, warning = meta.raw_exif(path, dev.libraw_tags)
    if warning:
        pending.append(warning)
    return Photo(
        rgb=rgb,
        bit_depth=16,
        icc_profile=None if settings.linear else srgb_icc_profile(),
        exif=exif,
        format="raw",
        raw=record,
    )


# ---------------------------------------------------------------------------------------- writing


def holds_8_bits_only(name: str | Path) -> bool:
    """Whether an output named ``name`` (a file name, ``.jpg`` or ``jpg``) holds 8 bits per sample
    only (JPEG, WebP), so ``--bit-depth 16`` cannot be kept there."""
    p = Path(name)
    ext = p.suffix if "." in p.name[1:] else str(name)  # a path's extension, or the extension given alone
    return OUTPUT_FORMATS.get(ext.lower().lstrip(".")) in EIGHT_BIT_FORMATS


def output_format(path: str | Path) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in OUTPUT_FORMATS:
        raise InputError(path, f"cannot write .{ext} files (choose png, tif, jpg or webp)")
    return OUTPUT_FORMATS[ext]


def write_photo(path: str | Path, photo: Photo, bit_depth: Optional[int] = None) -> Path:
    """Write ``photo`` atomically; the format follows the extension (png, tif/tiff, jpg/jpeg, webp).

    ``bit_depth`` defaults to the photo's own; JPEG and WebP are always 8-bit, PNG at most 16.
    A TIFF holds every page of the photo, other formats the first (the others dropped with a
    warning). What cannot be kept is logged and added to ``photo.warnings``. Returns the written path.
    """
    path = Path(path)
    fmt = output_format(path)
    depth = bit_depth or photo.bit_depth
    if fmt in EIGHT_BIT_FORMATS:
        depth = 8
    elif fmt == "png" and depth > 16:
        depth = 16
    if depth not in (8, 16, 32):
        raise ValueError(f"unsupported bit depth {depth}")
    side = _MAX_SIDE.get(fmt)
    if side and max(photo.size) > side:
        raise InputError(path, f"{photo.size[0]}x{photo.size[1]} does not fit a {fmt.upper()} file (at most {side} "
                               "pixels a side): write a .png or .tif")
    keep_alpha = fmt != "jpeg"
    if photo.alpha is not None and not keep_alpha:
        photo.warn(f"output {path.name} is a JPEG, which has no alpha channel: transparency dropped")
    if photo.pages and fmt != "tiff":
        photo.warn(f"{path.name}: {len(photo.pages)} further page(s) dropped ({fmt.upper()} holds one image; "
                   "use --ext tif to keep every page)")
    exif_bytes = None
    if photo.exif is not None:
        try:
            exif_bytes = photo.exif.tobytes()
            if fmt == "jpeg" and len(exif_bytes) > meta.JPEG_EXIF_LIMIT:
                exif_bytes, dropped = meta.fit_exif(photo.exif)
                size = f"{len(photo.exif.tobytes()) // 1024} KB"
                if exif_bytes is None:
                    photo.warn(f"{path.name}: EXIF ({size}) dropped: it does not fit a JPEG's 64 KB APP1 segment")
                else:
                    photo.warn(f"{path.name}: EXIF ({size}) too large for a JPEG's 64 KB APP1 segment: "
                               f"{', '.join(dropped)} dropped")
        except Exception as e:  # noqa: BLE001 - a malformed tag costs the EXIF block, not the image
            exif_bytes = None
            photo.warn(f"{path.name}: EXIF not copied (cannot re-encode it: {one_line(e)})")
    icc, dpi, colour = _print_and_colour(path, fmt, photo)
    with atomic_path(path) as tmp:
        if fmt == "tiff":
            write_tiff(tmp, photo, depth, path.name, icc=icc, dpi=dpi)
        elif fmt == "png" and depth == 16:
            samples = encode_samples(photo, depth, keep_alpha, where=path.name)
            data = png.write_png(samples, icc_profile=icc, exif=exif_bytes, dpi=dpi, colour=colour)
            tmp.write_bytes(data)
        else:
            im = Image.fromarray(encode_samples(photo, depth, keep_alpha, where=path.name))
            kwargs: dict = {}
            if icc:
                kwargs["icc_profile"] = icc
            if exif_bytes:
                kwargs["exif"] = exif_bytes
            if dpi:
                kwargs["dpi"] = dpi
            if fmt == "jpeg":
                kwargs.update(quality=JPEG_QUALITY, subsampling=0)
            elif fmt == "webp":
                kwargs.update(quality=JPEG_QUALITY)
            elif fmt == "png" and colour:
                from PIL import PngImagePlugin

                info = PngImagePlugin.PngInfo()
                for ctype, body in colour.items():
                    info.add(ctype.encode(), body)
                kwargs["pnginfo"] = info
            im.save(tmp, format=fmt.upper(), **kwargs)
    return path


def _print_and_colour(path: Path, fmt: str, photo: Photo) -> tuple:
    """(ICC profile, dpi, PNG colour chunks) an output of format ``fmt`` gets, with a warning for each
    that it cannot hold: WebP holds no print resolution; only a PNG holds gAMA / cHRM / sRGB (other
    formats get an sRGB ICC profile for an sRGB chunk when the photo has no profile)."""
    icc, dpi, colour = photo.icc_profile, photo.dpi, dict(photo.png_colour or {})
    if dpi and fmt == "webp":
        photo.warn(f"{path.name}: print resolution ({dpi[0]:g} x {dpi[1]:g} dpi) dropped (WebP holds none)")
        dpi = None
    if colour and fmt != "png":
        note = ""
        if "sRGB" in colour and not icc:
            icc, note = srgb_icc_profile(), "; the sRGB chunk became an sRGB ICC profile"
            del colour["sRGB"]
        if colour:
            photo.warn(f"{path.name}: PNG colour chunk(s) {', '.join(colour)} dropped ({fmt.upper()} holds "
                       f"none{note})")
        colour = {}
    return icc, dpi, colour


__all__ = [
    "EIGHT_BIT_FORMATS",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "OUTPUT_FORMATS",
    "Photo",
    "SUPPORTED_EXTENSIONS",
    "check_readable",
    "default_output_suffix",
    "encode_samples",
    "holds_8_bits_only",
    "is_supported",
    "output_format",
    "read_photo",
    "write_photo",
]
