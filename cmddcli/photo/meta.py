"""Photo metadata: EXIF orientation and cleaning (Pillow), and EXIF through exiv2 for RAW and TIFF.

* :func:`apply_orientation` / :func:`orientation_and_exif`: readers return pixels upright, with the
  EXIF Orientation (tag 274) applied, and writers store Orientation = 1, so a viewer shows the output
  as it showed the input whether or not the output format carries EXIF, and nothing rotates it twice.
* :func:`clean_exif`: the EXIF safe to attach to a new file (descriptive IFD0 tags, the Exif sub-IFD
  and GPS; no layout tags, MakerNote or thumbnail).

exiv2 (the pyexiv2 package): camera metadata from RAW files, the Exif sub-IFD in TIFFs.

Pillow reads and writes the EXIF of JPEG, PNG and WebP, but it cannot read a RAW file's tags and
tifffile cannot write an Exif sub-IFD. exiv2 (also used by darktable and digiKam) does both, so:

* :func:`raw_exif` reads a RAW file's EXIF with exiv2 (every RAW container exiv2 knows: DNG, NEF,
  CR2, CR3, ARW, ORF, RW2, RAF, PEF, SRW, KDC, ...), moves TIFF/EP tags that RAW files keep in IFD0
  (ExposureTime, FNumber, ISO, FocalLength, LensInfo, ...) to the Exif sub-IFD where JPEG/PNG/WebP
  readers look for them, fills what exiv2 did not find from LibRaw's own parse (exposure, aperture,
  ISO, focal length, capture time, lens), and returns it as a ``PIL.Image.Exif`` (so the writers
  treat it like any other photo's EXIF).
* :func:`write_exif_tags` adds the EXIF of a photo to a written file (used for TIFF outputs: Make,
  Model, DateTime and the Exif sub-IFD with exposure, ISO, focal length, lens, and GPS).

Kept: IFD0 descriptive tags (Make, Model, DateTime, Artist, Copyright, ImageDescription), the Exif
sub-IFD and GPS. Dropped: layout tags, sub-images and thumbnails, MakerNote and the maker-note groups,
DNG colour calibration tags, ColorSpace (the ICC profile says it) and the pixel dimensions.

Without pyexiv2 (it failed to install or to load), RAW outputs carry no camera metadata and TIFF
outputs only the IFD0 text tags; each affected file gets a warning that says how to fix it.
"""

from __future__ import annotations

import datetime
import io
import logging
import re
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install pyexiv2"

# IFD0 tags worth keeping (exiv2 key suffixes of Exif.Image.*).
_IFD0_KEEP = frozenset({"Make", "Model", "DateTime", "Artist", "Copyright", "ImageDescription"})
# TIFF/EP tags that RAW files store in IFD0: exiv2 name in Exif.Image -> name in Exif.Photo.
_TIFFEP_TO_EXIF = {
    "ExposureTime": "ExposureTime", "FNumber": "FNumber", "ExposureProgram": "ExposureProgram",
    "ISOSpeedRatings": "ISOSpeedRatings", "DateTimeOriginal": "DateTimeOriginal",
    "ShutterSpeedValue": "ShutterSpeedValue", "ApertureValue": "ApertureValue",
    "BrightnessValue": "BrightnessValue", "ExposureBiasValue": "ExposureBiasValue",
    "MaxApertureValue": "MaxApertureValue", "SubjectDistance": "SubjectDistance",
    "MeteringMode": "MeteringMode", "LightSource": "LightSource", "Flash": "Flash",
    "FocalLength": "FocalLength", "SensingMethod": "SensingMethod", "LensInfo": "LensSpecification",
    "CameraSerialNumber": "BodySerialNumber",
}
_RATIONAL_TAGS = frozenset({"ExposureTime", "FNumber", "FocalLength", "ApertureValue", "ShutterSpeedValue",
                            "ExposureBiasValue", "MaxApertureValue", "SubjectDistance", "BrightnessValue",
                            "DigitalZoomRatio"})
_DECIMAL = re.compile(r"^-?\d+\.\d*(e-?\d+)?$")
_EXIF_DROP = frozenset({"MakerNote", "PixelXDimension", "PixelYDimension", "InteroperabilityTag", "ColorSpace"})

_state: dict = {}


def exiv2():
    """The pyexiv2 module, or None when it cannot be imported (logged once, with the fix)."""
    if "mod" not in _state:
        try:
            import pyexiv2

            pyexiv2.set_log_level(4)  # exiv2's own console messages off; failures raise
            _state["mod"] = pyexiv2
        except Exception as e:  # noqa: BLE001 - ImportError, or OSError from its shared library
            _state["mod"] = None
            _state["why"] = f"{type(e).__name__}: {e}"
            log.warning("pyexiv2 is unavailable (%s): RAW camera metadata and the TIFF Exif sub-IFD are "
                        "not written; %s", _state["why"], INSTALL_HINT)
    return _state["mod"]


def unavailable_reason() -> str:
    return f"pyexiv2 is unavailable ({_state.get('why', 'not imported')}; {INSTALL_HINT})"


def filter_tags(tags: dict) -> dict:
    """exiv2 key -> value strings reduced to what is worth copying to another file (see module doc)."""
    out: dict = {}
    for key, value in tags.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "Exif" or not isinstance(value, str):
            continue
        group, name = parts[1], parts[2]
        if group == "Image" and name in _IFD0_KEEP:
            out[key] = value
        elif group == "Photo" and name not in _EXIF_DROP:
            out[key] = value
        elif group == "GPSInfo":
            out[key] = value
    for name, exif_name in _TIFFEP_TO_EXIF.items():  # IFD0 copies only where the Exif IFD has none
        value = tags.get(f"Exif.Image.{name}")
        if isinstance(value, str) and f"Exif.Photo.{exif_name}" not in out:
            out[f"Exif.Photo.{exif_name}"] = value
    for key in list(out):  # Pillow stores float values as DOUBLE; exiv2 writes these tags as RATIONAL
        if key.split(".")[-1] in _RATIONAL_TAGS and _DECIMAL.match(out[key]):
            out[key] = _rational(float(out[key]), 1_000_000)
    if out:
        out["Exif.Image.Orientation"] = "1"  # pixels are written upright
    return out


def _rational(x: float, max_den: int = 100000) -> str:
    f = Fraction(x).limit_denominator(max_den)
    return f"{f.numerator}/{f.denominator}"


def libraw_tags(other, lens) -> dict:
    """exiv2-style tags from rawpy's ``RawPy.other`` and ``RawPy.lens`` (LibRaw's own parse)."""
    tags: dict = {}
    if other is not None:
        if other.shutter_speed and other.shutter_speed > 0:
            s = float(other.shutter_speed)
            tags["Exif.Photo.ExposureTime"] = f"1/{round(1 / s)}" if s < 1 else _rational(s, 100)
        if other.aperture and other.aperture > 0:
            tags["Exif.Photo.FNumber"] = _rational(float(other.aperture), 100)
        if other.iso_speed and other.iso_speed > 0:
            tags["Exif.Photo.ISOSpeedRatings"] = str(int(round(other.iso_speed)))
        if other.focal_length and other.focal_length > 0:
            tags["Exif.Photo.FocalLength"] = _rational(float(other.focal_length), 100)
        ts = getattr(other, "timestamp", None)
        if isinstance(ts, datetime.datetime) and ts.year > 1970:
            tags["Exif.Photo.DateTimeOriginal"] = ts.strftime("%Y:%m:%d %H:%M:%S")
        if getattr(other, "artist", ""):
            tags["Exif.Image.Artist"] = str(other.artist)
    if lens is not None:
        if getattr(lens, "model", ""):
            tags["Exif.Photo.LensModel"] = str(lens.model)
        if getattr(lens, "make", ""):
            tags["Exif.Photo.LensMake"] = str(lens.make)
        lo, hi = float(getattr(lens, "min_focal", 0) or 0), float(getattr(lens, "max_focal", 0) or 0)
        if lo > 0 and hi > 0:
            tags["Exif.Photo.LensSpecification"] = f"{_rational(lo, 100)} {_rational(hi, 100)} 0/0 0/0"
    return tags


def read_tags(path: str | Path) -> dict:
    """All EXIF tags of a file as exiv2 key -> string (empty when exiv2 cannot read it). Raises
    nothing: an unreadable block only costs the metadata."""
    pyexiv2 = exiv2()
    if pyexiv2 is None:
        return {}
    try:
        with open(path, "rb") as f:  # ImageData: no trouble with non-ASCII paths
            img = pyexiv2.ImageData(f.read())
        try:
            return img.read_exif(encoding="utf-8")
        except UnicodeDecodeError:
            return img.read_exif(encoding="latin-1")
        finally:
            img.close()
    except Exception as e:  # noqa: BLE001 - exiv2 raises RuntimeError for formats it does not know
        log.debug("%s: exiv2 cannot read EXIF (%s)", path, e)
        return {}


def _tiny_jpeg(exif_bytes: Optional[bytes] = None) -> bytes:
    buf = io.BytesIO()
    kwargs = {"exif": exif_bytes} if exif_bytes else {}
    Image.new("L", (1, 1)).save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def tags_to_exif(tags: dict) -> Optional[Image.Exif]:
    """exiv2 tags -> ``PIL.Image.Exif`` (exiv2 encodes them into a 1x1 JPEG that Pillow then reads)."""
    pyexiv2 = exiv2()
    if pyexiv2 is None or not tags:
        return None
    img = pyexiv2.ImageData(_tiny_jpeg())
    try:
        img.modify_exif(tags, encoding="utf-8")
        data = img.get_bytes()
    finally:
        img.close()
    with Image.open(io.BytesIO(data)) as im:
        return im.getexif()


def exif_to_tags(exif: Image.Exif) -> dict:
    """``PIL.Image.Exif`` -> filtered exiv2 tags (the reverse of :func:`tags_to_exif`)."""
    pyexiv2 = exiv2()
    if pyexiv2 is None or exif is None:
        return {}
    img = pyexiv2.ImageData(_tiny_jpeg(exif.tobytes()))
    try:
        return filter_tags(img.read_exif(encoding="utf-8"))
    finally:
        img.close()


def raw_exif(path: str | Path, libraw: Optional[dict] = None) -> tuple[Optional[Image.Exif], Optional[str]]:
    """A RAW file's camera metadata as ``PIL.Image.Exif`` (Orientation 1) and a warning or None.

    ``libraw`` is :func:`libraw_tags` of the same file; its values fill tags exiv2 did not find.
    """
    warning = None
    tags = filter_tags(read_tags(path)) if exiv2() is not None else {}
    if exiv2() is None:
        warning = f"camera metadata (Make, Model, ...) not read: {unavailable_reason()}"
    for k, v in (libraw or {}).items():
        tags.setdefault(k, v)
    if not tags:
        return None, warning
    tags.setdefault("Exif.Image.Orientation", "1")
    try:
        exif = tags_to_exif(tags)
    except Exception as e:  # noqa: BLE001 - a tag exiv2 cannot encode costs the metadata, not the image
        return None, f"camera metadata not copied (exiv2: {e})"
    if exif is None:
        return None, warning
    return clean_exif(exif), warning


def write_exif_tags(path: str | Path, tags: dict) -> None:
    """Add ``tags`` (exiv2 key -> string) to the file at ``path`` in place (JPEG, PNG, TIFF, WebP)."""
    pyexiv2 = exiv2()
    if pyexiv2 is None:
        raise RuntimeError(unavailable_reason())
    with pyexiv2.Image(str(path)) as img:
        img.modify_exif(tags, encoding="utf-8")

# ---------------------------------------------------------------------------------------- EXIF with Pillow


ORIENTATION_TAG = 274


def apply_orientation(arr: np.ndarray, orientation: int | None) -> np.ndarray:
    """Return ``arr`` (H, W, ...) as it should be displayed for EXIF ``orientation`` 1-8.

    Same transforms as ``PIL.ImageOps.exif_transpose``: 2 mirror, 3 rotate 180, 4 flip,
    5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
    Unknown or missing values leave the array unchanged.
    """
    o = int(orientation or 1)
    if o == 2:
        arr = arr[:, ::-1]
    elif o == 3:
        arr = arr[::-1, ::-1]
    elif o == 4:
        arr = arr[::-1]
    elif o == 5:
        arr = arr.swapaxes(0, 1)
    elif o == 6:
        arr = np.rot90(arr, k=-1)
    elif o == 7:
        arr = arr.swapaxes(0, 1)[::-1, ::-1]
    elif o == 8:
        arr = np.rot90(arr, k=1)
    return np.ascontiguousarray(arr)


# IFD0 tags that describe the file layout, not the photo: never copied to another file.
_LAYOUT_TAGS = frozenset(
    {254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 284, 317, 320, 322, 323, 324, 325,
     338, 339, 340, 341, 513, 514, 529, 530, 531, 532, 700, 33723, 34377, 34675, 0x8769, 0x8825, 0xA005}
)
_DROPPED_EXIF_IFD_TAGS = frozenset({0xA005, 0x927C, 40962, 40963})  # interop ptr, MakerNote, pixel dims


def orientation_and_exif(exif: Optional[Image.Exif]) -> tuple[int, Optional[Image.Exif]]:
    """The EXIF Orientation (1 when missing or unreadable) and the EXIF to keep (:func:`clean_exif`)."""
    if exif is None:
        return 1, None
    try:
        orientation = int(exif.get(ORIENTATION_TAG, 1) or 1)
    except (TypeError, ValueError):
        orientation = 1
    return orientation, clean_exif(exif)


def clean_exif(src: Image.Exif) -> Optional[Image.Exif]:
    """EXIF safe to attach to a new file: descriptive IFD0 tags, the Exif sub-IFD and GPS, with
    Orientation = 1 (pixels are upright). None when nothing is worth keeping."""
    out = Image.Exif()
    try:
        for k, v in src.items():
            if k not in _LAYOUT_TAGS and not (k == 270 and _is_layout_description(v)):
                out[k] = v
        exif_ifd = {k: v for k, v in src.get_ifd(0x8769).items() if k not in _DROPPED_EXIF_IFD_TAGS}
        gps = dict(src.get_ifd(0x8825))
    except Exception as e:  # noqa: BLE001 - a malformed EXIF block only costs the metadata
        log.warning("ignoring unreadable EXIF (%s)", e)
        return None
    if exif_ifd:
        out.get_ifd(0x8769).update(exif_ifd)
    if gps:
        out.get_ifd(0x8825).update(gps)
    if not (set(out) - {ORIENTATION_TAG}) and not exif_ifd and not gps:
        return None
    out[ORIENTATION_TAG] = 1
    return out


def _is_layout_description(value) -> bool:
    """An ImageDescription that describes the file's layout (tifffile's shape JSON, ImageJ, OME-XML),
    not the photo: it would mislead a reader of another file."""
    return isinstance(value, str) and value.lstrip().startswith(('{"shape"', "ImageJ=", "<?xml", "<OME"))


# ---------------------------------------------------------------------------------------- EXIF size

JPEG_EXIF_LIMIT = 65533  # one APP1 segment: "Exif\0\0" and the TIFF block together (Pillow's limit)
# What is left when even the small tags do not fit: who made the photo, when, and how it was exposed.
_BASIC_IFD0 = (271, 272, 306, ORIENTATION_TAG)  # Make, Model, DateTime, Orientation
_BASIC_EXIF = (33434, 33437, 34855, 36867, 37386)  # ExposureTime, FNumber, ISO, DateTimeOriginal, FocalLength
_BIG_FIRST = (37510, 37500)  # UserComment, MakerNote: the usual reasons an EXIF block is large


def _tag_name(tag: int, ifd: int) -> str:
    from PIL import ExifTags

    names = ExifTags.GPSTAGS if ifd == 0x8825 else ExifTags.TAGS
    return names.get(tag, f"tag 0x{tag:04X}")


def _value_size(value) -> int:
    if isinstance(value, (bytes, str)):
        return len(value)
    if isinstance(value, (tuple, list)):
        return sum(_value_size(v) for v in value) + 4 * len(value)
    return 4


def fit_exif(exif: Image.Exif, limit: int = JPEG_EXIF_LIMIT) -> tuple[Optional[bytes], list]:
    """``exif`` encoded in at most ``limit`` bytes (``Exif\\0\\0`` included) and the names of the tags
    dropped to get there: UserComment and MakerNote first, then the largest tags (over 1 KB) one by
    one, then everything but the basic tags (Make, Model, DateTime, exposure); (None, ...) when even
    that does not fit."""
    data = exif.tobytes()
    if len(data) <= limit:
        return data, []
    ifds = {0: {k: v for k, v in exif.items() if k not in (0x8769, 0x8825)},
            0x8769: dict(exif.get_ifd(0x8769)), 0x8825: dict(exif.get_ifd(0x8825))}
    dropped: list = []

    def encode() -> bytes:
        out = Image.Exif()
        for k, v in ifds[0].items():
            out[k] = v
        for ifd in (0x8769, 0x8825):
            if ifds[ifd]:
                out.get_ifd(ifd).update(ifds[ifd])
        return out.tobytes()

    def drop(ifd: int, tag: int) -> None:
        del ifds[ifd][tag]
        dropped.append(_tag_name(tag, ifd))

    for tag in _BIG_FIRST:
        if tag in ifds[0x8769]:
            drop(0x8769, tag)
    data = encode()
    big = sorted(((_value_size(v), ifd, k) for ifd, tags in ifds.items() for k, v in tags.items()
                  if _value_size(v) > 1024), reverse=True)
    for _, ifd, tag in big:
        if len(data) <= limit:
            break
        drop(ifd, tag)
        data = encode()
    if len(data) > limit:
        for ifd, keep in ((0, _BASIC_IFD0), (0x8769, _BASIC_EXIF), (0x8825, ())):
            for tag in [k for k in ifds[ifd] if k not in keep]:
                drop(ifd, tag)
        data = encode()
    return (data if len(data) <= limit else None), dropped
