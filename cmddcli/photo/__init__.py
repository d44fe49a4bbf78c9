"""Photo I/O: decoding, RAW development, metadata (EXIF/ICC); plain sample arrays for data sets (arrays.py)."""

from .io import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    OUTPUT_FORMATS,
    SUPPORTED_EXTENSIONS,
    Photo,
    clean_exif,
    default_output_suffix,
    holds_8_bits_only,
    is_supported,
    output_format,
    read_photo,
    srgb_icc_profile,
    write_photo,
)
from .orientation import apply_orientation
from .raw import RAW_EXTENSIONS, RawDevelopment, RawSettings, develop, develop_raw, is_raw

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
    "develop_raw",
    "is_raw",
    "is_supported",
    "output_format",
    "read_photo",
    "srgb_icc_profile",
    "write_photo",
]
