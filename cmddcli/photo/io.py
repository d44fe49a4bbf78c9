"""Reading and writing photos: JPEG, PNG (8/16-bit), TIFF (8/16-bit, float), WebP, camera RAW.

Inside the library an image is a :class:`Photo`: upright float32 RGB in [0, 1] plus what is needed
to write it back the way it came (bit depth, gray or colour, alpha, ICC profile, EXIF).

Who decodes what:

* JPEG, WebP, 8-bit PNG and anything else Pillow opens: Pillow.
* 16-bit PNG: :mod:`.png` (libpng through imagecodecs; Pillow reduces 16-bit colour PNGs to 8 bits).
* TIFF: tifffile (8/16-bit, float, planar, alpha, every full-resolution page), Pillow as a fallback
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

* EXIF orientation is applied on read and written as 1 (see :mod:`.orientation`).
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

import contextlib
import dataclasses
import io
import logging
import struct
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from . import meta, png
from .samples import from_float, to_float
from ..atomic import atomic_path
from .orientation import ORIENTATION_TAG, apply_orientation
from .raw import RAW_EXTENSIONS, RawSettings, develop, is_raw

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp"})
SUPPORTED_EXTENSIONS = IMAGE_EXTENSIONS | RAW_EXTENSIONS
# output extension -> writer format
OUTPUT_FORMATS = {"png": "png", "tif": "tiff", "tiff": "tiff", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}
EIGHT_BIT_FORMATS = frozenset({"jpeg", "webp"})  # hold 8 bits per sample: written 8-bit whatever is asked
JPEG_QUALITY = 95  # JPEG and WebP outputs: quality 95, JPEG without chroma subsampling (4:4:4)
# Largest image decoded by default: above every camera sensor (151 MP is the largest), far below what
# a crafted header can claim. One limit for every decoder, checked from the header before decoding.
MAX_PIXELS = 180_000_000

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
        raw: RAW development record (``RawSettings.describe()`` plus ``half_size_applied``) for RAW
            sources, else None.
        value_range: (lo, hi) of the source samples that ``rgb`` 0 and 1 stand for: (0, 1) except for
            floating-point sources outside [0, 1], whose range is kept (writers map it back).
        premultiplied: the source stored associated (premultiplied) alpha; ``rgb`` is straight.
        pages: the further full-resolution pages of a multi-page TIFF, each a Photo.
        warnings: what could not be kept, one line each (readers and writers append; a photo made by
            :meth:`with_rgb` shares its source's list).
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
    value_range: tuple = (0.0, 1.0)
    premultiplied: bool = False
    pages: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.rgb.shape[1], self.rgb.shape[0]

    def with_rgb(self, rgb: np.ndarray) -> "Photo":
        """The same photo with new pixels (same size), e.g. the network output."""
        if rgb.shape != self.rgb.shape:
            raise ValueError(f"new pixels {rgb.shape} do not match {self.rgb.shape}")
        return dataclasses.replace(self, rgb=rgb)

    def map_pages(self, fn: Callable[[np.ndarray], np.ndarray]) -> "Photo":
        """The same photo with ``fn`` applied to the pixels of every page (e.g. the network)."""
        out = self.with_rgb(fn(self.rgb))
        out.pages = [p.with_rgb(fn(p.rgb)) for p in self.pages]
        return out

    def warn(self, message: str) -> None:
        """Record (and log) something that could not be kept."""
        log.warning("%s: %s", self.source or "image", message)
        self.warnings.append(message)


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
    limit = _SizeLimit(path, max_pixels)
    head = check_readable(path)

    pending: list[str] = []  # warnings raised before the Photo exists
    with _warnings.catch_warnings(record=True) as caught:  # decoders' own warnings: kept with the file's name
        _warnings.simplefilter("always")
        if is_raw(path):
            photo = _read_raw(path, raw_settings, limit, pending)
        elif head.startswith(png.SIGNATURE) and _png_bit_depth(head) == 16:
            info = png.png_info(head)
            limit.check(info.width, info.height)
            photo = _read_png_full_depth(path)
        elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            photo = _read_tiff(path, limit, pending)
        else:
            photo = _read_pillow(path, limit, pending)
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


class _SizeLimit:
    """The one decompression-bomb limit: ``check(w, h)`` raises InputError past ``max_pixels`` in all
    (every call adds to the total, so the pages of one file count together)."""

    def __init__(self, path: Path, max_pixels: Optional[int]):
        self.path, self.max_pixels, self.total = path, max_pixels, 0

    def check(self, width: int, height: int) -> None:
        self.total += int(width) * int(height)
        if self.max_pixels and self.total > self.max_pixels:
            what = f"{width}x{height} is" if self.total == int(width) * int(height) else "its pages together are"
            mp = self.max_pixels >= 100_000  # both numbers in the limit's unit
            raise InputError(self.path, f"image too large: {what} {_pixels(self.total, mp)}, over the "
                                        f"{_pixels(self.max_pixels, mp)} limit (raise it with --max-megapixels)")


def _pixels(n: int, megapixels: bool) -> str:
    return f"{n / 1e6:.1f} MP" if megapixels else f"{n} pixels"


@contextlib.contextmanager
def _pillow_bomb_check_off():
    """Pillow's own bomb check (a second, different limit) off while our header check runs instead."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _png_bit_depth(head: bytes) -> int:
    try:
        return png.png_info(head).bit_depth
    except png.PngError:
        return 0


def _to_float(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Samples -> float32 and the bit depth they had: 8/16-bit integers scaled to [0, 1]; floating
    point (and other integer types) as they are, with 32 (their range is dealt with by the caller)."""
    if arr.dtype in (np.uint8, np.uint16):
        return to_float(arr), 8 * arr.dtype.itemsize
    if arr.dtype == np.bool_:
        return arr.astype(np.float32), 8
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer):
        x = arr.astype(np.float32)
        finite = np.isfinite(x)
        if not finite.all():  # NaN -> 0, +-inf -> the finite extremes
            hi = float(x[finite].max(initial=1.0))
            lo = float(x[finite].min(initial=0.0))
            x = np.nan_to_num(x, nan=0.0, posinf=hi, neginf=lo)
        return x, 32
    raise ValueError(f"unsupported sample type {arr.dtype}")


def _from_channels(path: Path, arr: np.ndarray, premultiplied: bool = False):
    """(H, W) / (H, W, 1|2|3|4) samples -> (rgb float32 in [0, 1], gray?, alpha or None, bit depth,
    value range). Associated alpha is undone; float colour outside [0, 1] is scaled into it."""
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
    colour = x[..., :1] if gray else x[..., :3]
    alpha = np.clip(x[..., -1], 0.0, 1.0) if ch in (2, 4) else None
    if alpha is not None and premultiplied:
        a = alpha[..., None]
        colour = np.divide(colour, a, out=np.zeros_like(colour), where=a > 0)
        if depth != 32:
            colour = np.clip(colour, 0.0, 1.0)
    value_range = (0.0, 1.0)
    if depth == 32:
        lo, hi = min(0.0, float(colour.min(initial=0.0))), max(1.0, float(colour.max(initial=1.0)))
        if (lo, hi) != (0.0, 1.0):
            colour = (colour - lo) / (hi - lo)
            value_range = (lo, hi)
    rgb = np.repeat(colour, 3, axis=-1) if gray else colour
    return np.ascontiguousarray(rgb, dtype=np.float32), gray, alpha, depth, value_range


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


def _finish(path, arr, exif, icc, fmt, premultiplied: bool = False) -> Photo:
    orientation, exif = _orientation_and_exif(exif)
    rgb, gray, alpha, depth, value_range = _from_channels(path, arr, premultiplied)
    rgb = apply_orientation(rgb, orientation)
    alpha = None if alpha is None else apply_orientation(alpha, orientation)
    return Photo(rgb=rgb, bit_depth=depth, gray=gray, alpha=alpha, icc_profile=icc or None, exif=exif, format=fmt,
                 value_range=value_range, premultiplied=premultiplied and alpha is not None)


def _with_colour_key(arr: np.ndarray, key) -> np.ndarray:
    """Samples plus an alpha channel that is 0 where every channel equals the tRNS colour ``key``."""
    key = np.asarray(key if isinstance(key, (tuple, list)) else (key,), dtype=np.int64)
    a = arr[..., None] if arr.ndim == 2 else arr
    if a.shape[-1] != key.size:
        return arr
    match = (a.astype(np.int64) == key).all(axis=-1)
    top = np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else 1.0
    alpha = np.where(match, 0, top).astype(arr.dtype)
    return np.concatenate([a, alpha[..., None]], axis=-1)


def _read_pillow(path: Path, limit: Optional[_SizeLimit] = None, pending: Optional[list] = None) -> Photo:
    limit = limit or _SizeLimit(path, MAX_PIXELS)
    pending = [] if pending is None else pending
    try:
        with _pillow_bomb_check_off():
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
                arr = _with_colour_key(arr, _pillow_key(path, im, key))
            premultiplied = im.mode in ("RGBa", "La")
    except UnidentifiedImageError as e:
        raise InputError(path, "not an image (unrecognised format)") from e
    except Image.DecompressionBombError as e:
        raise InputError(path, f"image too large ({e})") from e
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        raise InputError(path, f"corrupt or truncated image ({_one_line(e)})") from e
    photo = _finish(path, arr, exif, icc, fmt, premultiplied=False)
    photo.premultiplied = premultiplied and photo.alpha is not None  # Pillow's convert un-premultiplied it
    return photo


def _pillow_key(path: Path, im: Image.Image, key):
    """The tRNS colour key in the units of :func:`_pillow_array`'s samples. Pillow scales 1/2/4-bit
    gray samples to 0..255 but leaves the key of 2/4-bit files unscaled; bilevel keys come as 0/255."""
    if im.mode == "1":
        return 255 if key else 0
    if im.mode == "L" and isinstance(key, int) and (im.format or "").upper() == "PNG":
        with open(path, "rb") as f:
            bits = _png_bit_depth(f.read(32))
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
            pending.append(f"CMYK image: its ICC profile is unusable ({_one_line(e)}), so it is dropped and "
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


def _read_png_full_depth(path: Path) -> Photo:
    try:
        arr, info = png.read_png(path.read_bytes())
    except png.PngError as e:
        raise InputError(path, str(e)) from e
    if info.transparency is not None:
        arr = _with_colour_key(arr, info.transparency)
    exif = None
    if info.exif:
        try:
            exif = Image.Exif()
            exif.load(b"Exif\x00\x00" + info.exif)
        except Exception:  # noqa: BLE001 - unreadable EXIF costs only the metadata
            exif = None
    return _finish(path, arr, exif, info.icc_profile, "png")


def _read_tiff(path: Path, limit: Optional[_SizeLimit] = None, pending: Optional[list] = None) -> Photo:
    """Every full-resolution page (reduced-resolution and mask pages are skipped); the first is the
    Photo, the others go to ``Photo.pages``."""
    import tifffile

    limit = limit or _SizeLimit(path, MAX_PIXELS)
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
            return _read_pillow(path, _SizeLimit(path, limit.max_pixels), pending)
        except InputError as pe:
            if "too large" in pe.reason:
                raise
            why = "no readable image page" if isinstance(e, (IndexError, KeyError)) else _one_line(e)
            raise InputError(path, f"corrupt or unsupported TIFF ({why})") from e
    if skipped:
        log.info("%s: %d reduced-resolution / mask page(s) skipped", path, skipped)
    exif = None
    try:
        with _pillow_bomb_check_off(), Image.open(path) as im:
            exif = im.getexif()
    except Exception:  # noqa: BLE001 - Pillow cannot parse every TIFF; the pixels came from tifffile
        exif = None
    photos = []
    for i, (arr, photometric, icc, premultiplied) in enumerate(decoded):
        if arr is None:  # CMYK, YCbCr, CIELab...: let Pillow convert (first page only)
            if i == 0:
                try:
                    return _read_pillow(path, _SizeLimit(path, limit.max_pixels), pending)
                except InputError as e:
                    raise InputError(path, f"unsupported TIFF photometric interpretation {photometric}") from e
            pending.append(f"page {i + 1} (photometric {photometric}) cannot be decoded here and is dropped")
            continue
        photos.append(_finish(path, arr, exif if i == 0 else None, icc, "tiff", premultiplied))
    photo = photos[0]
    photo.pages = photos[1:]
    return photo


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
    if photometric == 0 and arr.dtype in (np.uint8, np.uint16):  # min-is-white
        arr = np.iinfo(arr.dtype).max - arr
    elif photometric == 3 and page.colormap is not None:  # palette
        arr = np.moveaxis(page.colormap[:, arr], 0, -1).astype(np.uint16)
    extra = tuple(int(x) for x in (getattr(page, "extrasamples", None) or ()))
    premultiplied = bool(extra) and extra[0] == 1  # ExtraSamples 1 = associated alpha
    return arr, photometric, icc, premultiplied


def _read_raw(path: Path, settings: RawSettings, limit: Optional[_SizeLimit] = None,
              pending: Optional[list] = None) -> Photo:
    limit = limit or _SizeLimit(path, MAX_PIXELS)
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


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    msg = lines[0] if lines else ""
    if len(msg) < 8 or isinstance(e, (KeyError, IndexError)):  # "0", "'pages'": say what it was
        msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return msg


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


def _quantise(x: np.ndarray, depth: int) -> np.ndarray:
    """8/16-bit: clipped to [0, 1] and rounded; 32 (float): as it is (its range was mapped back)."""
    if depth in (8, 16):
        return from_float(x, depth)
    return x.astype(np.float32)


def encode_samples(photo: Photo, depth: int, keep_alpha: bool = True, premultiply: bool = False,
                   where: str | Path = "") -> np.ndarray:
    """The samples a writer stores: (H, W) gray, (H, W, 2) gray+alpha, (H, W, 3) or (H, W, 4).

    The colour goes back to ``photo.value_range``; an 8/16-bit output clips it to [0, 1] and, when
    that loses anything, warns with the clipped fraction. ``premultiply`` stores associated alpha.
    """
    rgb = photo.rgb
    colour = rgb.mean(axis=-1, keepdims=True) if photo.gray else rgb
    lo, hi = photo.value_range
    if (lo, hi) != (0.0, 1.0):
        colour = colour * (hi - lo) + lo
        if depth != 32:
            clipped = float(np.mean((colour < 0.0) | (colour > 1.0)))
            if clipped > 0:
                photo.warn(f"{where or 'output'}: floating-point samples span [{lo:g}, {hi:g}]; {clipped:.1%} of "
                           f"them clipped to [0, 1] in this {depth}-bit output (write a .tif to keep the range)")
    alpha = photo.alpha if keep_alpha else None
    if alpha is not None and premultiply:
        colour = colour * alpha[..., None]
    planes = [colour] if alpha is None else [colour, alpha[..., None]]
    x = np.concatenate(planes, axis=-1) if len(planes) > 1 else planes[0]
    x = _quantise(x, depth)
    return x[..., 0] if x.shape[-1] == 1 else x


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
        except Exception as e:  # noqa: BLE001 - a malformed tag costs the EXIF block, not the image
            photo.warn(f"{path.name}: EXIF not copied (cannot re-encode it: {_one_line(e)})")
    with atomic_path(path) as tmp:
        if fmt == "tiff":
            _write_tiff(tmp, photo, depth, path.name)
        elif fmt == "png" and depth == 16:
            samples = encode_samples(photo, depth, keep_alpha, where=path.name)
            data = png.write_png(samples, icc_profile=photo.icc_profile, exif=exif_bytes)
            tmp.write_bytes(data)
        else:
            im = Image.fromarray(encode_samples(photo, depth, keep_alpha, where=path.name))
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


def _write_tiff(tmp: Path, photo: Photo, depth: int, name: str = "") -> None:
    """Every page into one TIFF (zlib), then the Exif sub-IFD and GPS added with exiv2."""
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
            samples = encode_samples(page, depth, True, premultiply=assoc, where=name)
            ch = 1 if samples.ndim == 2 else samples.shape[-1]
            tw.write(
                samples,
                photometric="minisblack" if ch in (1, 2) else "rgb",
                extrasamples=(["assocalpha"] if assoc else ["unassalpha"]) if ch in (2, 4) else None,
                compression="zlib",
                predictor=samples.dtype != np.float32,
                iccprofile=page.icc_profile or None,
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
        photo.warn(f"{name}: Exif sub-IFD not written (exiv2: {_one_line(e)})")


__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
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
