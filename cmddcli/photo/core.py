"""The decoded photo and what every reader and writer shares: :class:`Photo`, the size limit,
samples to float RGB (gray, alpha, premultiplied alpha, float ranges) and back, the sRGB profile."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from ..errors import InputError
from . import png
from .meta import apply_orientation, orientation_and_exif
from .samples import from_float, to_float

log = logging.getLogger(__name__)

# Largest image decoded by default: above every camera sensor (151 MP is the largest), far below what
# a crafted header can claim. One limit for every decoder, checked from the header before decoding.
MAX_PIXELS = 180_000_000

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
        dpi: print resolution (x, y) in dots per inch, or None (none in the file, or no unit).
        png_colour: a PNG source's gAMA / cHRM / sRGB chunk bodies by chunk type (a PNG output
            writes them again).
        sample_type: the source's stored sample type where a TIFF output can hold it again (numpy
            dtype name; ``"bool"`` for 1-bit), else None.
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
    sample_type: Optional[str] = None
    dpi: Optional[tuple] = None
    png_colour: dict = field(default_factory=dict)
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


class SizeLimit:
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
def pillow_bomb_check_off():
    """Pillow's own bomb check (a second, different limit) off while our header check runs instead."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def png_bit_depth(head: bytes) -> int:
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


def photo_from_samples(path, arr, exif, icc, fmt, premultiplied: bool = False) -> Photo:
    orientation, exif = orientation_and_exif(exif)
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr))) if np.issubdtype(arr.dtype, np.floating) else 0
    rgb, gray, alpha, depth, value_range = _from_channels(path, arr, premultiplied)
    rgb = apply_orientation(rgb, orientation)
    alpha = None if alpha is None else apply_orientation(alpha, orientation)
    photo = Photo(rgb=rgb, bit_depth=depth, gray=gray, alpha=alpha, icc_profile=icc or None, exif=exif, format=fmt,
                  value_range=value_range, premultiplied=premultiplied and alpha is not None, source=Path(path))
    if bad:
        photo.warn(f"{bad} non-finite sample(s) (NaN or +-inf) of {arr.size} replaced (NaN by 0, +-inf by the "
                   "largest / smallest finite value)")
    return photo


def with_colour_key(arr: np.ndarray, key) -> np.ndarray:
    """Samples plus an alpha channel that is 0 where every channel equals the tRNS colour ``key``."""
    key = np.asarray(key if isinstance(key, (tuple, list)) else (key,), dtype=np.int64)
    a = arr[..., None] if arr.ndim == 2 else arr
    if a.shape[-1] != key.size:
        return arr
    match = (a.astype(np.int64) == key).all(axis=-1)
    top = np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else 1.0
    alpha = np.where(match, 0, top).astype(arr.dtype)
    return np.concatenate([a, alpha[..., None]], axis=-1)


def one_line(e: BaseException) -> str:
    """An exception as one short line for a reason or warning."""
    lines = str(e).strip().splitlines()
    msg = lines[0] if lines else ""
    if len(msg) < 8 or isinstance(e, (KeyError, IndexError)):  # "0", "'pages'": say what it was
        msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return msg


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
