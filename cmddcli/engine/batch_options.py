"""How `cmdd deblur` names, writes and resumes its outputs: :class:`BatchOptions`, one object for a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import runtime
from ..errors import CmddError
from ..photo import MAX_PIXELS, OUTPUT_FORMATS, RawSettings, holds_8_bits_only
from . import resume
from .options import DEFAULT_OVERLAP, MIN_USER_TILE, PRECISIONS, tile_overlap_problem
from .antiring import parse_antiring
from .strength import RestoreOptions


@dataclass(frozen=True)
class BatchOptions:
    """How the runner names, writes and resumes outputs (output folder, format, suffix, bit depth, RAW
    development, size limit, restore options); one object for a whole run."""
    out_dir: Path
    recursive: bool = False
    ext: Optional[str] = None  # "png" / "tif" / "jpg" / "webp"; None: same as the input (RAW -> tif)
    suffix: str = ""
    overwrite: bool = False
    bit_depth: Optional[int] = None  # None: keep the input's
    raw: RawSettings = RawSettings()
    dry_run: bool = False
    max_pixels: Optional[int] = MAX_PIXELS  # decompression-bomb limit per file (None: none)
    recipe: dict = field(default_factory=dict)  # what else makes an output (e.g. the weights' digest)
    restore: RestoreOptions = RestoreOptions()  # strength, focus auto / mask, --save-blur-map
    report: bool = False  # write report previews (OUT/.cmdd/report) for cmddcli.engine.report

    def __post_init__(self):
        # The suffix is part of a file name: a path separator in it would put outputs (and, with "..",
        # overwrite unrelated files) outside out_dir.
        if any(c in self.suffix for c in ("/", "\\", "\0")):
            raise CmddError(f"--suffix {self.suffix!r}: must not contain '/', '\\' or NUL (it is appended to file names)")

    def recipe_for(self, source: Optional[Path] = None) -> dict:
        """What makes an output of ``source`` (all files when None) what it is: :func:`.resume.recipe`."""
        return resume.recipe(self.recipe, self.bit_depth, self.raw, source)

    @classmethod
    def for_deblur(cls, out_dir: Path, *, weights: Optional[Path] = None, device: str = "auto",
                   precision: str = "auto", tile: Optional[int] = None, overlap: int = DEFAULT_OVERLAP,
                   recursive: bool = False, ext: Optional[str] = None, suffix: str = "", overwrite: bool = False,
                   bit_depth: Optional[int] = None, raw_linear: bool = False, raw_half_size: bool = False,
                   max_megapixels: float = MAX_PIXELS / 1e6, strength: float = 1.0, focus: str = "all",
                   mask: Optional[Path] = None, save_blur_map: bool = False, report: bool = False,
                   dry_run: bool = False, antiring: str = "card") -> "BatchOptions":
        """``cmdd deblur``'s options, checked before the output folder is made or a photo is read.

        Everything the engine would refuse later (format, bit depth, tile and overlap, precision,
        device, weights, size limit, anti-ringing, strength / focus / mask, an HTML page of another
        program where ``report`` writes, a dry run's scan backend) raises CmddError here, naming the flag. The recipe (what a resume
        compares) gets the weights' digest, the restore options and the engine settings as given:
        precision "auto" stays "auto", so a resume on another machine matches; they change an output
        by a few 8-bit levels at most, but they made it.
        """
        fmt = ext.lower().lstrip(".") if ext is not None else None
        if fmt is not None and fmt not in OUTPUT_FORMATS:
            raise CmddError(f"--ext must be one of png, tif, jpg, webp (got {ext!r})")
        if bit_depth not in (None, 8, 16):
            raise CmddError(f"--bit-depth must be 8 or 16 (got {bit_depth})")
        if bit_depth == 16 and fmt is not None and holds_8_bits_only(fmt):
            raise CmddError(f"--bit-depth 16 needs --ext png or tif ({ext} is 8-bit only)")
        problem = tile_overlap_problem(tile, overlap, min_tile=MIN_USER_TILE, flag="--")
        if problem:
            raise CmddError(problem)
        if (precision or "auto").lower() not in PRECISIONS:
            raise CmddError(f"--precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
        if dry_run:  # a dry run may plan a GPU run on a machine without one
            runtime.check_device_name(device)
        else:
            runtime.resolve_device(device)
        from ..model.weights import check_weights, resolve_weights

        if dry_run:  # a dry run loads no weights; a real run refuses bad ones before making -o
            resolve_weights(weights)
        else:
            check_weights(weights)
        if max_megapixels < 0:
            raise CmddError(f"--max-megapixels must be >= 0 (0 = no limit; got {max_megapixels:g})")
        restore = RestoreOptions(strength=strength, focus=focus.lower(), mask=mask, save_blur_map=save_blur_map)
        engine_recipe = {"precision": (precision or "auto").lower(), "tile": "auto" if tile is None else tile}
        if tile != 0:
            engine_recipe["overlap"] = overlap  # whole-image inference has no overlap
        ring = parse_antiring(antiring)
        if ring != "card":  # the card's own setting is part of the weights' digest already
            engine_recipe["antiring"] = ring.describe() if ring else "off"
        opts = cls(
            out_dir=out_dir, recursive=recursive, ext=fmt, suffix=suffix, overwrite=overwrite, bit_depth=bit_depth,
            raw=RawSettings(linear=raw_linear, half_size=raw_half_size), dry_run=dry_run,
            max_pixels=int(max_megapixels * 1e6) or None,
            recipe={"weights_sha256": resume.weights_digest(weights),
                    "restore": {k: v for k, v in restore.describe().items() if k != "save_blur_map"},
                    "engine": engine_recipe},
            restore=restore, report=report and not dry_run,
        )
        if opts.report and not overwrite:  # refused before any photo, not after the batch
            from .report import foreign_report

            if (page := foreign_report(Path(out_dir))) is not None:
                raise CmddError(f"{page} exists and is not a cmdd report; --report would replace it "
                                "(remove it, use another -o, or --overwrite)")
        if dry_run:  # what the real run refuses before any photo (the Deblurrer does it there)
            from ..model import ssm

            ssm.choose_backend(runtime.resolve_device(device).type, needs_grad=False)
        return opts
