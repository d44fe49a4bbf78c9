"""The photographer's controls applied after the network: strength, and what to restore.

``finish(original, restored, options)`` turns the network's full restoration into what is
written: everything (default, the network's output unchanged), the auto-detected subject
(``--focus auto``, background bokeh left as shot) or a user mask (``--mask``), at a strength
(``--strength``), mixed in linear light (see :mod:`.blend` and :mod:`.blurmap`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CmddError
from .blend import STRENGTH_MAX, blend, check_strength, load_mask
from .blurmap import estimate_blur_map, focus_mask

log = logging.getLogger(__name__)

FOCUS_MODES = ("all", "auto")

__all__ = ["FOCUS_MODES", "RestoreOptions", "Finished", "finish", "finish_photo", "tagged_exif", "STRENGTH_MAX"]


@dataclass(frozen=True)
class RestoreOptions:
    """What part of the restoration is kept.

    Args:
        strength: 0 = the photo as shot, 1 = the network's output, up to STRENGTH_MAX (1.5)
            extrapolates; blended in linear light.
        focus: "all" (restore everything) or "auto" (restore the least-blurred region, the
            subject; leave the blurrier background as shot).
        mask: a grey image of the photo's size: white = restore, black = keep, grey = blend.
            Not together with focus "auto".
        save_blur_map: also compute the defocus map (for ``--save-blur-map``) when not needed.
    """

    strength: float = 1.0
    focus: str = "all"
    mask: Optional[Path] = None
    save_blur_map: bool = False

    def __post_init__(self):
        check_strength(self.strength)
        if self.focus not in FOCUS_MODES:
            raise CmddError(f"--focus must be one of {', '.join(FOCUS_MODES)} (got {self.focus!r})")
        if self.mask is not None and self.focus != "all":
            raise CmddError("--mask and --focus auto cannot be used together (the mask says what to restore)")
        if self.mask is not None and not Path(self.mask).is_file():
            raise CmddError(f"{self.mask}: mask not found")

    @property
    def mode(self) -> str:
        """'everything', 'focus auto' or 'mask NAME' (for summaries and metadata)."""
        if self.mask is not None:
            return f"mask {Path(self.mask).name}"
        return "focus auto" if self.focus == "auto" else "everything"

    def describe(self) -> dict:
        return {"strength": self.strength, "restore": self.mode,
                "mask": str(self.mask) if self.mask is not None else None,
                "save_blur_map": self.save_blur_map}

    def description(self) -> str:
        """One line for the output's ImageDescription."""
        return f"cmdd deblur: strength {self.strength:g}, restored {self.mode}"


@dataclass
class Finished:
    """``rgb``: (H, W, 3) float32 in [0, 1] to write. ``blur_map``: (H, W) CoC radius estimate (px)
    when computed. ``weight``: (H, W) restore weight in [0, 1] when not everything was restored.
    ``restored_fraction``: mean of the weight (1.0 for everything). ``warnings``: sentences."""

    rgb: np.ndarray
    blur_map: Optional[np.ndarray] = None
    weight: Optional[np.ndarray] = None
    restored_fraction: float = 1.0
    warnings: list[str] = field(default_factory=list)


def finish(original: np.ndarray, restored: np.ndarray, options: RestoreOptions = RestoreOptions(),
           encoded: bool = True) -> Finished:
    """Apply ``options`` to one photo.

    Args:
        original: (H, W, 3) float32 in [0, 1], the photo as shot.
        restored: (H, W, 3) float32 in [0, 1], the network's output.
        encoded: the pixels are sRGB-encoded (False: already linear, e.g. ``--raw-linear``).

    Raises InputError when the mask cannot be used with this photo (wrong size, unreadable).
    """
    warnings: list[str] = []
    blur_map = weight = None
    if options.focus == "auto" or options.save_blur_map:
        blur_map = estimate_blur_map(original)
    if options.mask is not None:
        h, w = original.shape[:2]
        weight = load_mask(options.mask, (w, h))
    elif options.focus == "auto":
        fr = focus_mask(blur_map, image=original)
        if fr.warning:
            warnings.append(fr.warning)
        weight = None if fr.threshold is None else fr.mask
    if options.strength > 1.0:
        warnings.append(f"strength {options.strength:g} extrapolates beyond the network's output "
                        f"(limit {STRENGTH_MAX:g}); check for halos")
    rgb = blend(original, restored, options.strength, weight, encoded=encoded)
    fraction = 1.0 if weight is None else float(weight.mean())
    return Finished(rgb, blur_map, weight, fraction, warnings)


SOFTWARE_TAG = 305  # EXIF / TIFF Software
DESCRIPTION_TAG = 270  # EXIF / TIFF ImageDescription


def tagged_exif(exif, options: RestoreOptions):
    """A copy of ``exif`` (``PIL.Image.Exif`` or None) with Software = "cmdd VERSION" and the
    settings in ImageDescription (a camera's own description is kept in front, after " | ")."""
    from PIL import Image

    from .. import __version__
    from ..photo import clean_exif

    out = (clean_exif(exif) if exif is not None else None) or Image.Exif()
    out[SOFTWARE_TAG] = f"cmdd {__version__}"
    own = out.get(DESCRIPTION_TAG)
    own = own.strip(" \x00") if isinstance(own, str) else ""
    out[DESCRIPTION_TAG] = f"{own} | {options.description()}" if own else options.description()
    return out


def finish_photo(photo, restored, options: RestoreOptions) -> tuple[object, Finished]:
    """:func:`finish` for a ``cmddcli.photo.Photo`` and its restored copy (every page), with the
    settings written into the EXIF (Software, ImageDescription). Returns (photo to write, the first
    page's :class:`Finished`)."""
    raw = photo.raw or {}
    encoded = list(raw.get("gamma", [])) != [1.0, 1.0]  # a RAW developed linear is already linear light
    first = finish(photo.rgb, restored.rgb, options, encoded)
    out = restored.with_rgb(first.rgb)
    out.pages = [r.with_rgb(finish(p.rgb, r.rgb, options, encoded).rgb) for p, r in zip(photo.pages, restored.pages)]
    out.exif = tagged_exif(restored.exif, options)
    return out, first
