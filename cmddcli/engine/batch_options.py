"""How `cmdd deblur` names, writes and resumes its outputs: :class:`BatchOptions`, one object for a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import CmddError
from ..photo import MAX_PIXELS, RawSettings
from . import resume
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
