"""Photo I/O: reading and writing (io.py; Pillow, TIFF and PNG decoders in pillow.py, tiff.py, png.py),
the decoded Photo (core.py), RAW development (raw.py), metadata (meta.py: EXIF cleaning, orientation,
exiv2); plain sample arrays for data sets (arrays.py).

Imports run one way: io -> pillow / tiff / png / raw -> core -> meta.
"""

from .core import MAX_PIXELS, Photo, srgb_icc_profile
from .io import (
    IMAGE_EXTENSIONS,
    OUTPUT_FORMATS,
    SUPPORTED_EXTENSIONS,
    default_output_suffix,
    holds_8_bits_only,
    is_supported,
    output_format,
    read_photo,
    write_photo,
)
from .meta import apply_orientation, clean_exif
from .raw import RAW_EXTENSIONS, RawDevelopment, RawSettings, develop, is_raw

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "OUTPUT_FORMATS",
    "RAW_EXTENSIONS",
    "SUPPORTED_EXTENSIONS",
    "Photo",
    "RawDevelopment",
    "RawSettings",
    "apply_orientation",
    "clean_exif",
    "default_output_suffix",
    "holds_8_bits_only",
    "develop",
    "is_raw",
    "is_supported",
    "output_format",
    "read_photo",
    "srgb_icc_profile",
    "write_photo",
]
