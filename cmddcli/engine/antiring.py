"""Anti-ringing: clamp a restoration to the blurred input's local range, widened by a margin.

Over-sharpening draws rims along strong edges: output values darker (or brighter) than anything
around them in the photo. Image scalers remove the same ringing by clamping each output pixel to the
range of the input pixels near it (mpv's ``--scale-antiring``, madVR's anti-ringing filter); cmdd does
the same after the network, per colour channel::

    out = clip(out, min_w(inp) - m / 255, max_w(inp) + m / 255)

where ``min_w`` / ``max_w`` are the smallest / largest value of the *blurred input* within a ``w`` x
``w`` square around the pixel and ``m`` the margin in 8-bit levels. Deblurring legitimately goes
beyond the blurred input's range (a blurred highlight is dimmer than the sharp one), so the margin
and window trade rims against detail: the setting is chosen on validation per weights and travels
on the weights file's card (``"antiring": {"window": W, "margin": M}``; training/v3/README.md,
session 22, for how the default's was chosen). :class:`~cmddcli.engine.Deblurrer` applies the card's
setting to the whole stitched image, so tiled and whole-image inference clamp alike.

Fast path: :func:`local_range` (separable running extremes by doubling spans). Reference:
``scipy.ndimage``'s ``minimum_filter`` / ``maximum_filter`` (tests/test_antiring.py compares them on
random inputs, exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..errors import CmddError, WeightsError

__all__ = ["AntiRing", "local_range", "local_min", "local_max", "parse_antiring", "ANTIRING_CHOICES"]

BAND_ROWS = 64  # AntiRing.apply works in bands of rows (+ context): 12 MP in 0.29 s on 2 cores, 0.88 s whole
ANTIRING_CHOICES = "card, off or WINDOW,MARGIN (px, 8-bit levels), e.g. 11,4"


@dataclass(frozen=True)
class AntiRing:
    """The clamp's setting.

    Args:
        window: side of the square neighbourhood in pixels, odd, >= 3.
        margin: how far beyond the input's local range the output may go, in 8-bit levels (>= 0;
            1 level = 1/255 of the [0, 1] range, at any bit depth).

    Raises:
        CmddError: an even or too small window, a negative or non-finite margin.
    """

    window: int
    margin: float

    def __post_init__(self):
        if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 3 or self.window % 2 == 0:
            raise CmddError(f"anti-ringing window must be an odd whole number >= 3 px, got {self.window!r}")
        if isinstance(self.margin, bool) or not (isinstance(self.margin, (int, float))
                                                 and 0 <= float(self.margin) < float("inf")):
            raise CmddError(f"anti-ringing margin must be >= 0 (8-bit levels), got {self.margin!r}")

    def describe(self) -> str:
        """e.g. ``'9 px window, 4 levels'`` (summaries, ``cmdd info``)."""
        return f"{self.window} px window, {float(self.margin):g} levels"

    def to_card(self) -> dict:
        """The JSON entry a weights card stores."""
        return {"window": self.window, "margin": float(self.margin)}

    @classmethod
    def from_card(cls, value, path="weights") -> "AntiRing":
        """Read a card's ``antiring`` entry. Raises WeightsError (naming ``path``) when it is not
        ``{"window": odd int >= 3, "margin": number >= 0}``."""
        if not isinstance(value, dict) or set(value) != {"window", "margin"}:
            raise WeightsError(f"{path}: unusable anti-ringing entry on the card: {value!r} "
                               "(expected {\"window\": W, \"margin\": M})")
        try:
            return cls(value["window"], value["margin"])
        except CmddError as e:
            raise WeightsError(f"{path}: unusable anti-ringing entry on the card: {e}") from e

    def apply(self, out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """Clamp ``out`` to ``inp``'s local range widened by the margin.

        Args: ``out``, ``inp``: (B, C, H, W) float tensors in [0, 1], one shape and device.
        Returns: a new (B, C, H, W) tensor. Raises ValueError when the shapes differ.
        """
        if out.shape != inp.shape or out.ndim != 4:
            raise ValueError(f"anti-ringing needs two (B, C, H, W) tensors of one shape, got {tuple(out.shape)} "
                             f"and {tuple(inp.shape)}")
        m = float(self.margin) / 255.0
        r, height = self.window // 2, out.shape[-2]
        res = torch.empty_like(out)
        for a in range(0, height, BAND_ROWS):  # bands of rows (+ r rows of context): cache-sized, same result
            b = min(height, a + BAND_ROWS)
            a0, b0 = max(0, a - r), min(height, b + r)
            lo, hi = local_range(inp[..., a0:b0, :], self.window)
            rows = slice(a - a0, b - a0)
            res[..., a:b, :] = torch.maximum(torch.minimum(out[..., a:b, :], hi[..., rows, :].add_(m)),
                                             lo[..., rows, :].sub_(m))
        return res


def local_range(x: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of ``x`` over a ``window`` x ``window`` square around each pixel; the square is cut at
    the image's edges (as ``scipy.ndimage`` filters with ``mode="nearest"``).

    Args: ``x``: (B, C, H, W) float tensor; ``window``: odd >= 1 px. Returns two tensors of ``x``'s shape.
    Fast path: separable (rows, then columns), each a running extreme by doubling spans (window 11: 4
    elementwise ``torch.maximum`` per axis instead of 10), ~10x faster than ``max_pool2d`` on CPU.
    """
    return local_min(x, window), local_max(x, window)


def local_min(x: torch.Tensor, window: int) -> torch.Tensor:
    """The min half of :func:`local_range` (same shapes, same cut square)."""
    r = window // 2
    return _running(_running(x, window, r, -1, torch.minimum, float("inf")), window, r, -2, torch.minimum, float("inf"))


def local_max(x: torch.Tensor, window: int) -> torch.Tensor:
    """The max half of :func:`local_range` (same shapes, same cut square)."""
    r = window // 2
    return _running(_running(x, window, r, -1, torch.maximum, float("-inf")), window, r, -2, torch.maximum,
                    float("-inf"))


def _running(x: torch.Tensor, window: int, r: int, dim: int, pick, fill: float) -> torch.Tensor:
    """``pick`` (torch.minimum / torch.maximum) over ``window`` consecutive values along ``dim``, centred;
    ``x`` padded with ``fill`` by ``r`` on both sides so the window is cut at the edges."""
    if window == 1:
        return x.clone()  # a new tensor, as for every other window (callers may change it in place)
    pad = [0, 0] * (x.ndim - 1 - (dim % x.ndim)) + [r, r]  # F.pad counts from the last dimension
    f = F.pad(x, pad, value=fill)
    span = 1  # f[i] = pick over positions i .. i + span - 1 of the padded x
    while span * 2 <= window:
        n = f.shape[dim] - span
        f = pick(f.narrow(dim, 0, n), f.narrow(dim, span, n))
        span *= 2
    if span < window:  # two overlapping spans cover the window
        n = f.shape[dim] - (window - span)
        f = pick(f.narrow(dim, 0, n), f.narrow(dim, window - span, n))
    return f


def parse_antiring(spec: Union[str, AntiRing, None]) -> Union[str, AntiRing, None]:
    """A user's ``--antiring``: ``"card"`` (what the weights' card names; the default), ``"off"`` /
    None (no clamp), ``"W,M"`` (window px, margin levels) or an :class:`AntiRing`.

    Returns ``"card"``, None or an AntiRing. Raises CmddError for anything else.
    """
    if spec is None or isinstance(spec, AntiRing):
        return spec
    s = str(spec).strip().lower()
    if s == "card":
        return "card"
    if s in ("off", "none", "0"):
        return None
    parts = s.split(",")
    if len(parts) == 2:
        try:
            window, margin = int(parts[0]), float(parts[1])
        except ValueError:
            pass
        else:
            return AntiRing(window, margin)
    raise CmddError(f"--antiring must be {ANTIRING_CHOICES}; got {spec!r}")


def resolve_antiring(spec: Union[str, AntiRing, None], card: Optional[dict], path="weights") -> Optional[AntiRing]:
    """The clamp an engine applies: ``spec`` as :func:`parse_antiring` reads it, ``"card"`` resolved
    against the weights' metadata ``card`` (no entry: no clamp)."""
    choice = parse_antiring(spec)
    if choice == "card":
        entry = (card or {}).get("antiring")
        return None if entry is None else AntiRing.from_card(entry, path)
    return choice
