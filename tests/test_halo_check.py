"""cmddcli.eval.checks.halo_excursions (scripts/halo_check.py, scripts/ship_check.py): output
excursions beyond the local range of input and target."""

import numpy as np
from scipy.ndimage import uniform_filter

from cmddcli.eval.checks import halo_excursions, halo_share


def _edge():
    target = np.zeros((32, 32, 3))
    target[:, 16:] = 0.8
    blurred = uniform_filter(target, size=(1, 7, 1), mode="nearest")
    return blurred, target


def test_restoration_and_blur_stay_in_range():
    blurred, target = _edge()
    for out in (target, blurred, 0.5 * (target + blurred)):
        under, over = halo_excursions(out, blurred, target)
        assert under.max() == 0 and over.max() == 0


def test_a_dark_rim_is_measured_in_8bit_levels():
    blurred, target = _edge()
    out = target.copy()
    out[:, 14:16] = -0.04  # a dark rim two pixels wide, 0.04 below black next to the edge
    under, over = halo_excursions(out, blurred, target)
    assert np.allclose(under[:, 14:16], 0.04 * 255) and under[:, :14].max() == 0 and under[:, 16:].max() == 0
    assert over.max() == 0
    bright = target.copy()
    bright[:, 16:18] = 0.9
    assert np.allclose(halo_excursions(bright, blurred, target)[1][:, 16:18], 0.1 * 255)


def test_halo_share_counts_pixels_beyond_four_levels_in_percent():
    under = np.array([[0.0, 4.0], [4.5, 10.0]])
    over = np.zeros((2, 2))
    assert halo_share(under, over) == (50.0, 0.0)  # 4.0 is not beyond 4 levels
