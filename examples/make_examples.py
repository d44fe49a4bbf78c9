"""Rebuild the example photos: public-domain / CC0 pictures from scikit-image, blurred with a disk.

    python examples/make_examples.py

Each picture is resized (if needed) to at most 512 px, then convolved with a uniform disk kernel
(a defocus point-spread function: every pixel spread evenly over a circle of radius R pixels),
in linear light (sRGB decoded, blurred, re-encoded), with reflected borders. See SOURCES.md.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data, transform

HERE = Path(__file__).resolve().parent

# name -> (skimage loader, max side, disk radius in pixels, output file)
EXAMPLES = {
    "chelsea": (data.chelsea, 451, 4.0, "chelsea_defocus.png"),
    "coffee": (data.coffee, 512, 5.0, "coffee_defocus.jpg"),
    "astronaut": (data.astronaut, 384, 3.0, "astronaut_defocus.png"),
}


def disk_kernel(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    k = (x * x + y * y <= radius * radius).astype(np.float64)
    return k / k.sum()


def srgb_to_linear(x):
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x):
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(np.clip(x, 0, None), 1 / 2.4) - 0.055)


def defocus(rgb: np.ndarray, radius: float) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (H, W, 3) blurred by a disk of ``radius`` pixels in linear light."""
    lin = srgb_to_linear(rgb.astype(np.float64) / 255.0)
    k = disk_kernel(radius)
    out = np.stack([ndimage.convolve(lin[..., c], k, mode="reflect") for c in range(3)], -1)
    return np.clip(np.rint(linear_to_srgb(out) * 255.0), 0, 255).astype(np.uint8)


def main() -> None:
    for load, max_side, radius, fname in EXAMPLES.values():
        img = load()
        h, w = img.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        if scale < 1.0:
            size = (round(h * scale), round(w * scale))
            img = (transform.resize(img, size, anti_aliasing=True) * 255).round().astype(np.uint8)
        out = defocus(img, radius)
        path = HERE / fname
        if path.suffix == ".jpg":
            Image.fromarray(out).save(path, quality=92)
        else:
            Image.fromarray(out).save(path, optimize=True)
        print(f"{path.name}: {out.shape[1]}x{out.shape[0]}, disk radius {radius} px")


if __name__ == "__main__":
    main()
