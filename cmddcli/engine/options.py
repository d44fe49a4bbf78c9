"""The engine's user-facing choices as plain values (no torch import), shared by the engine and the CLI."""

from __future__ import annotations

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # "auto": bf16 / fp16 on CUDA, bf16 on CPUs with native bf16, else fp32
# Pixels shared by neighbouring tiles (each side keeps half, blended). 32, not 64: the same seam error
# against the whole-image output, 5-11 % less time (benchmarks/RESULTS.md, bench_overlap.py).
DEFAULT_OVERLAP = 32

# Smallest --tile a user may ask for: below it the network sees too little context (16-px tiles of
# the default weights are 34.7 dB from the whole-image output; the engine itself goes lower on OOM),
# and the default 32-px overlap would be half the tile.
MIN_USER_TILE = 128


def tile_overlap_problem(tile: int | None, overlap: int, *, min_tile: int = 1, flag: str = "") -> str | None:
    """What is wrong with a tile size and overlap, or None. The one home of the rule.

    Args:
        tile: tile side in pixels; None (automatic) or 0 (whole image) need no tile check.
        overlap: pixels shared by neighbouring tiles; must be >= 0 and at most half the tile.
        min_tile: smallest accepted tile side (the CLI passes :data:`MIN_USER_TILE`).
        flag: prefix for the names in the message (``"--"`` for the CLI's options).

    Returns:
        A one-line message naming the bad value, or None when both are valid.
    """
    if tile is not None and tile < 0:
        return f"{flag}tile must be >= 0 (0 = whole image), got {tile}"
    if overlap < 0:
        return f"{flag}overlap must be >= 0, got {overlap}"
    if not tile:
        return None
    if tile < min_tile:
        return f"{flag}tile must be 0 (whole image) or at least {min_tile} pixels, got {tile}"
    if 2 * overlap > tile:
        return f"{flag}overlap must be at most half the tile, got overlap {overlap}, tile {tile}"
    return None
