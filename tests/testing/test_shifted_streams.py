"""The shifted streams the alert tests send: each shift does what its name says to uint8
digits, and keeps them uint8 (N, 28, 28)."""

from __future__ import annotations

import numpy as np

from testing import shifted_streams as ss


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """Three 'digits': a vertical bar in the middle, light on dark, labelled 1, 7, 1."""
    x = np.zeros((3, 28, 28), np.uint8)
    x[:, 6:22, 13:15] = 255
    return x, np.array([1, 7, 1])


def test_inverted_turns_light_on_dark_into_dark_on_light() -> None:
    x, _ = _digits()
    out = ss.inverted(x)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 255 and out[0, 10, 13] == 0
    assert np.array_equal(ss.inverted(out), x)


def test_rotated_turns_the_bar_and_keeps_its_ink_near() -> None:
    x, _ = _digits()
    out = ss.rotated(x, 90.0)
    assert out.shape == x.shape and out.dtype == np.uint8
    assert out[0, 13:15, 6:22].min() == 255 and out[0, 6:12, 13:15].max() == 0  # now across
    tilted = ss.rotated(x, 30.0)
    assert not np.array_equal(tilted, x)
    assert abs(int(tilted.sum()) - int(x.sum())) < 0.1 * x.sum()


def test_noisy_is_seeded_and_clipped() -> None:
    x, _ = _digits()
    a, b = ss.noisy(x, 60.0, seed=0), ss.noisy(x, 60.0, seed=0)
    assert np.array_equal(a, b) and not np.array_equal(a, ss.noisy(x, 60.0, seed=1))
    assert a.dtype == np.uint8 and a[:, :5, :5].mean() > 10  # the dark ground got noise
    grey = np.full((100, 28, 28), 128, np.uint8)  # 2 sigma from either end: little clipped
    spread = ss.noisy(grey, 60.0, seed=0).astype(float) - 128
    assert 44 < np.abs(spread).mean() < 49  # sigma 60: 60 * sqrt(2 / pi) = 47.9


def test_thickened_widens_every_stroke_by_a_pixel_each_side() -> None:
    x, _ = _digits()
    out = ss.thickened(x)
    assert (out >= x).all() and out.dtype == np.uint8
    assert (out[0] == 255).sum() == 18 * 4  # the 16x2 bar, now 18x4


def test_one_class_keeps_the_digits_of_that_label() -> None:
    x, y = _digits()
    x[1] = 7
    assert len(ss.one_class(x, y, 1)) == 2 and (ss.one_class(x, y, 7) == 7).all()
    assert ss.shifted("one_class", x, y).shape == (2, 28, 28)
