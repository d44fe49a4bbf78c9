"""EXIF orientation, applied once on read.

Policy (one place, tested in tests/test_photo.py): readers return pixels *upright*, with the EXIF
Orientation (tag 274) already applied, and writers store Orientation = 1. So a viewer shows the
output the same way it showed the input whether or not the output format carries EXIF, and no
program can rotate it a second time.
"""

from __future__ import annotations

import numpy as np

ORIENTATION_TAG = 274


def apply_orientation(arr: np.ndarray, orientation: int | None) -> np.ndarray:
    """Return ``arr`` (H, W, ...) as it should be displayed for EXIF ``orientation`` 1-8.

    Same transforms as ``PIL.ImageOps.exif_transpose``: 2 mirror, 3 rotate 180, 4 flip,
    5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
    Unknown or missing values leave the array unchanged.
    """
    o = int(orientation or 1)
    if o == 2:
        arr = arr[:, ::-1]
    elif o == 3:
        arr = arr[::-1, ::-1]
    elif o == 4:
        arr = arr[::-1]
    elif o == 5:
        arr = arr.swapaxes(0, 1)
    elif o == 6:
        arr = np.rot90(arr, k=-1)
    elif o == 7:
        arr = arr.swapaxes(0, 1)[::-1, ::-1]
    elif o == 8:
        arr = np.rot90(arr, k=1)
    return np.ascontiguousarray(arr)
