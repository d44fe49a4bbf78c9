"""Camera RAW development through rawpy (LibRaw).

Development is fixed and written down (``RawSettings.postprocess_params()`` is recorded in every
run summary) so that a result can be reproduced::

    rawpy.imread(path).postprocess(
        use_camera_wb=True,          # the camera's as-shot white balance
        use_auto_wb=False,
        no_auto_bright=True,         # keep the exposure; LibRaw's auto-brightening is off
        bright=1.0,
        output_color=rawpy.ColorSpace.sRGB,
        output_bps=16,               # 16 bits per sample
        gamma=(2.4, 12.92),          # the sRGB tone curve; (1, 1) with --raw-linear
        half_size=False,             # True with --raw-half-size (2x2 binning, no demosaicing)
        demosaic_algorithm=rawpy.DemosaicAlgorithm.AHD,
        highlight_mode=rawpy.HighlightMode.Clip,
        user_flip=None,              # LibRaw applies the camera's orientation flag
    )

The developed image is upright (LibRaw applied the orientation), 16-bit, sRGB primaries. Non-linear
output carries an sRGB ICC profile; linear output carries none (its gamma is 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import InputError

RAW_EXTENSIONS = frozenset(
    ".3fr .ari .arw .bay .cr2 .cr3 .crw .dcr .dcs .dng .erf .fff .iiq .k25 .kdc .mef .mos .mrw .nef "
    ".nrw .orf .pef .raf .raw .rw2 .rwl .sr2 .srf .srw .x3f".split()
)


def is_raw(path: str | Path) -> bool:
    return Path(path).suffix.lower() in RAW_EXTENSIONS


@dataclass(frozen=True)
class RawSettings:
    """How RAW files are developed before the network (see the module docstring)."""

    linear: bool = False  # gamma (1, 1) instead of the sRGB curve
    half_size: bool = False  # LibRaw half_size: half the width and height, faster

    def postprocess_params(self) -> dict:
        """The exact keyword arguments given to ``rawpy.RawPy.postprocess`` (as JSON-able values)."""
        return {
            "use_camera_wb": True,
            "use_auto_wb": False,
            "no_auto_bright": True,
            "bright": 1.0,
            "output_color": "sRGB",
            "output_bps": 16,
            "gamma": [1.0, 1.0] if self.linear else [2.4, 12.92],
            "half_size": self.half_size,
            "demosaic_algorithm": "AHD",
            "highlight_mode": "Clip",
            "user_flip": None,
        }

    def describe(self) -> dict:
        import rawpy

        return {
            "postprocess": self.postprocess_params(),
            "rawpy": rawpy.__version__,
            "libraw": ".".join(str(v) for v in rawpy.libraw_version),
        }


@dataclass
class RawDevelopment:
    """What :func:`develop` made: the pixels and what LibRaw actually did and read."""

    rgb: np.ndarray  # upright (H, W, 3) uint16
    half_size_applied: bool  # False when half_size was asked for and LibRaw ignored it (LinearRaw DNG)
    libraw_tags: dict  # exiv2-style EXIF tags from LibRaw's parse (exposure, ISO, lens, ...)
    size: tuple  # (width, height) before development


def develop(path: str | Path, settings: RawSettings | None = None,
            check_size: Optional[Callable[[int, int], None]] = None) -> RawDevelopment:
    """Develop a RAW file to an upright (H, W, 3) uint16 array and say what LibRaw did; InputError with
    one line if LibRaw can't.

    ``check_size(width, height)`` is called with the sensor size from the header, before LibRaw
    unpacks or develops anything (it raises to refuse the file).
    """
    import rawpy

    from .meta import libraw_tags

    settings = settings or RawSettings()

    p = settings.postprocess_params()
    kwargs = dict(p)
    kwargs["output_color"] = rawpy.ColorSpace.sRGB
    kwargs["gamma"] = tuple(p["gamma"])
    kwargs["demosaic_algorithm"] = rawpy.DemosaicAlgorithm.AHD
    kwargs["highlight_mode"] = rawpy.HighlightMode.Clip
    try:
        with rawpy.imread(str(path)) as raw:
            sizes = raw.sizes
            if check_size is not None:
                check_size(int(sizes.width), int(sizes.height))
            rgb = raw.postprocess(**kwargs)
            try:
                tags = libraw_tags(raw.other, raw.lens)
            except Exception:  # noqa: BLE001 - older rawpy without other/lens: exiv2 still reads them
                tags = {}
    except rawpy.LibRawFileUnsupportedError as e:
        raise InputError(path, "unsupported RAW format or compression (LibRaw cannot decode it)") from e
    except rawpy.LibRawIOError as e:
        raise InputError(path, "truncated or corrupt RAW file (LibRaw read error)") from e
    except rawpy.LibRawError as e:
        raise InputError(path, f"RAW decoding failed: {_libraw_message(e)}") from e
    except MemoryError as e:
        raise InputError(path, "RAW decoding ran out of memory") from e
    full = max(int(sizes.width), int(sizes.height))
    applied = settings.half_size and max(rgb.shape[:2]) <= (full + 1) // 2
    return RawDevelopment(rgb, bool(applied) if settings.half_size else False, tags,
                          (int(sizes.width), int(sizes.height)))


def _libraw_message(e: Exception) -> str:
    msg = e.args[0] if e.args else type(e).__name__
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    return f"{type(e).__name__}: {msg}"
