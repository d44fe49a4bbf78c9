"""Photo I/O: decoding, RAW development, metadata (EXIF/ICC) and atomic writes."""

from .atomic import atomic_path, atomic_write_bytes
from .io import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    OUTPUT_FORMATS,
    SUPPORTED_EXTENSIONS,
    Photo,
    clean_exif,
    default_output_suffix,
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
    "atomic_path",
    "atomic_write_bytes",
    "clean_exif",
    "default_output_suffix",
    "develop",
    "develop_raw",
    "is_raw",
    "is_supported",
    "output_format",
    "read_photo",
    "srgb_icc_profile",
    "write_photo",
]
