"""Sample conversions, each written once: stored uint8 / uint16 <-> the library's float32 in [0, 1], and the
sRGB transfer curve (IEC 61966-2-1) <-> linear light."""

from __future__ import annotations

import numpy as np

__all__ = ["to_float", "from_float", "srgb_to_linear", "linear_to_srgb"]


def to_float(a: np.ndarray) -> np.ndarray:
    """uint8/uint16 -> float32 in [0, 1]."""
    scale = 65535.0 if a.dtype == np.uint16 else 255.0
    return a.astype(np.float32) / np.float32(scale)


def from_float(x: np.ndarray, bits: int = 8) -> np.ndarray:
    """float in [0, 1] -> uint8 (bits=8) or uint16 (bits=16), rounded and clipped."""
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    top = 65535.0 if bits == 16 else 255.0
    return np.round(np.clip(x, 0.0, 1.0) * top).astype(np.uint16 if bits == 16 else np.uint8)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1), float32."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB-encoded values (IEC 61966-2-1), float32."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1.0 / 2.4) - 0.055).astype(np.float32)
