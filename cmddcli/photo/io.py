"""Reading and writing photos: JPEG, PNG (8/16-bit), TIFF (8/16-bit, float), WebP, camera RAW.

Inside the library an image is a :class:`Photo`: upright float32 RGB in [0, 1] plus what is needed
to write it back the way it came (bit depth, gray or colour, alpha, ICC profile, EXIF).

Who decodes what:

* JPEG, WebP, 8-bit PNG and anything else Pillow opens: Pillow.
* 16-bit PNG: :mod:`.png16` (Pillow reduces 16-bit colour PNGs to 8 bits).
* TIFF: tifffile (8/16-bit, float, planar, alpha), Pillow as a fallback for compressions tifffile
  cannot undo without imagecodecs (JPEG-in-TIFF, ...).
* RAW: rawpy, developed as in :mod:`.raw`.

Metadata policy:

* EXIF orientation is applied on read and written as 1 (see :mod:`.orientation`).
* EXIF is carried by JPEG, PNG and WebP outputs (IFD0 descriptive tags, the Exif sub-IFD and GPS;
  layout tags, the thumbnail IFD, MakerNote, the interoperability pointer and XMP are dropped).
  TIFF outputs keep Make, Model, DateTime, Artist, Copyright and ImageDescription as IFD0 tags but
  not the Exif sub-IFD (tifffile cannot write one).
* The ICC profile is copied to every output format (PNG iCCP, JPEG/WebP APP2/ICCP, TIFF tag 34675).
  RAW developments get an sRGB profile (none when developed linear). A CMYK input's profile is
  dropped because the pixels are converted to RGB.
* Alpha is passed through untouched (requantised only when the bit depth changes); JPEG has no alpha,
  so it is dropped there with a warning.
* Gray inputs are processed as RGB and written back gray (mean of the three output channels).
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from . import png16
from .atomic import atomic_path
from .orientation import ORIENTATION_TAG, apply_orientation
from .raw import RAW_EXTENSIONS, RawSettings, develop_raw, is_raw

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp"})
SUPPORTED_EXTENSIONS = IMAGE_EXTENSIONS | RAW_EXTENSIONS
# output extension -> writer format
OUTPUT_FORMATS = {"png": "png", "tif": "tiff", "tiff": "tiff", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}
JPEG_QUALITY = 95  # JPEG and WebP outputs: quality 95, JPEG without chroma subsampling (4:4:4)

# IFD0 tags that describe the file layout, not the photo: never copied to another file.
_LAYOUT_TAGS = frozenset(
    {254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 284, 317, 320, 322, 323, 324, 325,
     338, 339, 340, 341, 513, 514, 529, 530, 531, 532, 700, 33723, 34377, 34675, 0x8769, 0x8825, 0xA005}
)
_DROPPED_EXIF_IFD_TAGS = frozenset({0xA005, 0x927C, 40962, 40963})  # interop ptr, MakerNote, pixel dims
_TIFF_TEXT_TAGS = (270, 271, 272, 306, 315, 33432)  # description, make, model, datetime, artist, copyright

_srgb_icc_cache: list[bytes] = []


def srgb_icc_profile() -> bytes:
    """An sRGB ICC profile (from Pillow's littleCMS), for RAW developments."""
    if not _srgb_icc_cache:
        from PIL import ImageCms

        _srgb_icc_cache.append(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    return _srgb_icc_cache[0]


@dataclass
class Photo:
    """A decoded photo.

    Attributes:
        rgb: (H, W, 3) float32 in [0, 1], upright (EXIF orientation applied).
        bit_depth: bits per sample of the source: 8, 16, or 32 for floating-point TIFF.
        gray: the source was single-channel; writers store one channel again.
        alpha: (H, W) float32 in [0, 1] or None, upright.
        icc_profile: ICC profile bytes or None.
        exif: cleaned EXIF (``PIL.Image.Exif``, Orientation = 1) or None.
        format: 'jpeg', 'png', 'tiff', 'webp', 'raw' or another Pillow format name (lower case).
        source: the file it came from.
        raw: RAW development record (``RawSettings.describe()``) for RAW sources, else None.
    """

    rgb: np.ndarray
    bit_depth: int = 8
    gray: bool = False
    alpha: Optional[np.ndarray] = None
    icc_profile: Optional[bytes] = None
    exif: Optional[Image.Exif] = None
    format: str = ""
    source: Optional[Path] = None
    raw: Optional[dict] = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.rgb.shape[1], self.rgb.shape[0]

    def with_rgb(self, rgb: np.ndarray) -> "Photo":
        """The same photo with new pixels (same size), e.g. the network output."""
        if rgb.shape != self.rgb.shape:
            raise ValueError(f"new pixels {rgb.shape} do not match {self.rgb.shape}")
        return dataclasses.replace(self, rgb=rgb)


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


def read_photo(path: str | Path, raw_settings: Optional[RawSettings] = None) -> Photo:
    """Decode one file (RAW developed with ``raw_settings``, default ``RawSettings()``).

    Raises InputError (one line: why) for anything that is not a usable image.
    """
    path = Path(path)
    raw_settings = raw_settings or RawSettings()
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not an image")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror or e})") from e
    if size == 0:
        raise InputError(path, "empty file (0 bytes)")

    if is_raw(path):
        photo = _read_raw(path, raw_settings)
    elif head.startswith(png16.SIGNATURE) and _png_bit_depth(head) == 16:
        photo = _read_png16(path)
    elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        photo = _read_tiff(path)
    else:
        photo = _read_pillow(path)
    photo.source = path
    if not np.isfinite(photo.rgb).all():
        photo.rgb = np.nan_to_num(photo.rgb, nan=0.0, posinf=1.0, neginf=0.0)
    if float(photo.rgb.max(initial=0.0)) <= 0.0:
        raise InputError(path, "decodes to an all-black image (no image data)")
    return photo


def _png_bit_depth(head: bytes) -> int:
    try:
        return png16.png_info(head).bit_depth
    except png16.PngError:
        return 0


def _to_float(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer or float samples -> float32 in [0, 1] and the bit depth they had."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0, 8
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0, 16
    if arr.dtype == np.bool_:
        return arr.astype(np.float32), 8
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0), 32
    raise ValueError(f"unsupported sample type {arr.dtype}")


def _from_channels(path: Path, arr: np.ndarray) -> tuple[np.ndarray, bool, Optional[np.ndarray], int]:
    """(H, W) / (H, W, 1|2|3|4) samples -> (rgb float32, gray?, alpha or None, bit depth)."""
    try:
        x, depth = _to_float(arr)
    except ValueError as e:
        raise InputError(path, str(e)) from e
    if x.ndim == 2:
        x = x[..., None]
    ch = x.shape[-1]
    if x.ndim != 3 or ch not in (1, 2, 3, 4):
        raise InputError(path, f"unsupported image layout {arr.shape}")
    gray = ch in (1, 2)
    rgb = np.repeat(x[..., :1], 3, axis=-1) if gray else x[..., :3]
    alpha = x[..., -1] if ch in (2, 4) else None
    return np.ascontiguousarray(rgb), gray, alpha, depth


def _orientation_and_exif(exif: Optional[Image.Exif]) -> tuple[int, Optional[Image.Exif]]:
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
            if k not in _LAYOUT_TAGS:
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


def _finish(path, arr, exif, icc, fmt) -> Photo:
    orientation, exif = _orientation_and_exif(exif)
    rgb, gray, alpha, depth = _from_channels(path, arr)
    rgb = apply_orientation(rgb, orientation)
    alpha = None if alpha is None else apply_orientation(alpha, orientation)
    return Photo(rgb=rgb, bit_depth=depth, gray=gray, alpha=alpha, icc_profile=icc or None, exif=exif, format=fmt)


def _read_pillow(path: Path) -> Photo:
    try:
        with Image.open(path) as im:
            im.load()
            fmt = (im.format or "").lower()
            fmt = "jpeg" if fmt == "mpo" else fmt
            icc = im.info.get("icc_profile")
            try:
                exif = im.getexif()
            except Exception:  # noqa: BLE001 - unreadable EXIF costs only the metadata
                exif = None
            arr = _pillow_array(im)
            if im.mode == "CMYK":
                icc = None  # a CMYK profile does not describe the converted RGB pixels
                log.warning("%s: CMYK image converted to RGB; its ICC profile is dropped", path)
    except UnidentifiedImageError as e:
        raise InputError(path, "not an image (unrecognised format)") from e
    except Image.DecompressionBombError as e:
        raise InputError(path, f"image too large ({e})") from e
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        raise InputError(path, f"corrupt or truncated image ({_one_line(e)})") from e
    return _finish(path, arr, exif, icc, fmt)


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


def _read_png16(path: Path) -> Photo:
    try:
        arr, info = png16.read_png(path.read_bytes())
    except png16.PngError as e:
        raise InputError(path, str(e)) from e
    exif = None
    if info.exif:
        try:
            exif = Image.Exif()
            exif.load(b"Exif\x00\x00" + info.exif)
        except Exception:  # noqa: BLE001 - unreadable EXIF costs only the metadata
            exif = None
    return _finish(path, arr, exif, info.icc_profile, "png")


def _read_tiff(path: Path) -> Photo:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
            photometric = int(page.photometric)
            arr = page.asarray()
            if int(page.planarconfig) == 2 and arr.ndim == 3:
                arr = np.moveaxis(arr, 0, -1)  # (S, H, W) -> (H, W, S)
            icc_tag = page.tags.get(34675)
            icc = bytes(icc_tag.value) if icc_tag is not None else None
            colormap = page.colormap if photometric == 3 else None
    except Exception as e:  # noqa: BLE001 - tifffile raises many types; fall back to Pillow
        try:
            return _read_pillow(path)
        except InputError:
            raise InputError(path, f"corrupt or unsupported TIFF ({_one_line(e)})") from e
    if photometric == 0 and arr.dtype in (np.uint8, np.uint16):  # min-is-white
        arr = np.iinfo(arr.dtype).max - arr
    elif photometric == 3 and colormap is not None:  # palette
        arr = np.moveaxis(colormap[:, arr], 0, -1).astype(np.uint16)
    elif photometric not in (0, 1, 2):
        try:  # CMYK, YCbCr, CIELab...: let Pillow convert
            return _read_pillow(path)
        except InputError as e:
            raise InputError(path, f"unsupported TIFF photometric interpretation {photometric}") from e
    exif = None
    try:
        with Image.open(path) as im:
            exif = im.getexif()
    except Exception:  # noqa: BLE001 - Pillow cannot parse every TIFF; the pixels came from tifffile
        exif = None
    return _finish(path, arr, exif, icc, "tiff")


def _read_raw(path: Path, settings: RawSettings) -> Photo:
    arr = develop_raw(path, settings)  # upright uint16 (H, W, 3)
    rgb = arr.astype(np.float32) / 65535.0
    return Photo(
        rgb=rgb,
        bit_depth=16,
        icc_profile=None if settings.linear else srgb_icc_profile(),
        format="raw",
        raw=settings.describe(),
    )


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    msg = lines[0] if lines else ""
    if len(msg) < 8 or isinstance(e, (KeyError, IndexError)):  # "0", "'pages'": say what it was
        msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return msg


# ---------------------------------------------------------------------------------------- writing


def output_format(path: str | Path) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in OUTPUT_FORMATS:
        raise InputError(path, f"cannot write .{ext} files (choose png, tif, jpg or webp)")
    return OUTPUT_FORMATS[ext]


def _quantise(x: np.ndarray, depth: int) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    if depth == 8:
        return np.rint(x * 255.0).astype(np.uint8)
    if depth == 16:
        return np.rint(x * 65535.0).astype(np.uint16)
    return x.astype(np.float32)


def encode_samples(photo: Photo, depth: int, keep_alpha: bool = True) -> np.ndarray:
    """The samples a writer stores: (H, W) gray, (H, W, 2) gray+alpha, (H, W, 3) or (H, W, 4)."""
    rgb = photo.rgb
    planes = [rgb.mean(axis=-1, keepdims=True)] if photo.gray else [rgb]
    if photo.alpha is not None and keep_alpha:
        planes.append(photo.alpha[..., None])
    x = np.concatenate(planes, axis=-1) if len(planes) > 1 else planes[0]
    x = _quantise(x, depth)
    return x[..., 0] if x.shape[-1] == 1 else x


def write_photo(path: str | Path, photo: Photo, bit_depth: Optional[int] = None) -> Path:
    """Write ``photo`` atomically; the format follows the extension (png, tif/tiff, jpg/jpeg, webp).

    ``bit_depth`` defaults to the photo's own; JPEG and WebP are always 8-bit, PNG at most 16.
    Returns the written path.
    """
    path = Path(path)
    fmt = output_format(path)
    depth = bit_depth or photo.bit_depth
    if fmt in ("jpeg", "webp"):
        depth = 8
    elif fmt == "png" and depth > 16:
        depth = 16
    if depth not in (8, 16, 32):
        raise ValueError(f"unsupported bit depth {depth}")
    keep_alpha = fmt != "jpeg"
    if photo.alpha is not None and not keep_alpha:
        log.warning("%s: JPEG has no alpha channel; transparency dropped", path)
    samples = encode_samples(photo, depth, keep_alpha)
    exif_bytes = None
    if photo.exif is not None:
        try:
            exif_bytes = photo.exif.tobytes()
        except Exception as e:  # noqa: BLE001 - a malformed tag costs the EXIF block, not the image
            log.warning("%s: EXIF not copied (cannot re-encode it: %s)", path, _one_line(e))
    with atomic_path(path) as tmp:
        if fmt == "tiff":
            _write_tiff(tmp, samples, photo)
        elif fmt == "png" and depth == 16:
            data = png16.write_png(samples, icc_profile=photo.icc_profile, exif=exif_bytes)
            tmp.write_bytes(data)
        else:
            im = Image.fromarray(samples)
            kwargs: dict = {}
            if photo.icc_profile:
                kwargs["icc_profile"] = photo.icc_profile
            if exif_bytes:
                kwargs["exif"] = exif_bytes
            if fmt == "jpeg":
                kwargs.update(quality=JPEG_QUALITY, subsampling=0)
            elif fmt == "webp":
                kwargs.update(quality=JPEG_QUALITY)
            im.save(tmp, format=fmt.upper(), **kwargs)
    return path


def _write_tiff(tmp: Path, samples: np.ndarray, photo: Photo) -> None:
    import tifffile

    ch = 1 if samples.ndim == 2 else samples.shape[-1]
    extratags = []
    if photo.exif is not None:
        for tag in _TIFF_TEXT_TAGS:
            value = photo.exif.get(tag)
            if isinstance(value, str) and value.strip() and value.isascii():
                extratags.append((tag, "s", 0, value.strip("\x00"), True))
    tifffile.imwrite(
        tmp,
        samples,
        photometric="minisblack" if ch in (1, 2) else "rgb",
        extrasamples=["unassalpha"] if ch in (2, 4) else None,
        compression="zlib",
        predictor=samples.dtype != np.float32,
        iccprofile=photo.icc_profile or None,
        metadata=None,
        software="cmdd",
        extratags=extratags,
    )


__all__ = [
    "IMAGE_EXTENSIONS",
    "OUTPUT_FORMATS",
    "Photo",
    "SUPPORTED_EXTENSIONS",
    "clean_exif",
    "default_output_suffix",
    "encode_samples",
    "is_supported",
    "output_format",
    "read_photo",
    "srgb_icc_profile",
    "write_photo",
]
