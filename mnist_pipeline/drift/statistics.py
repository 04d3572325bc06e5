"""The drift tests, in numpy: each compares a window of recent values with the reference
profile's summary of them, and has a threshold calibrated for the window's size.

- A numeric signal (a digit feature, the max-softmax confidence): the two-sample
  Kolmogorov-Smirnov statistic D between the window and the reference's quantiles. It needs no
  binning, sees a shift of any part of the distribution, and has a known null scaling: D times
  sqrt(n K / (n + K)) (n window values, K reference quantiles) has the same distribution
  whatever n, so one calibrated constant gives the threshold of every window size. Evidently
  picks KS for up to 1000 values too; past that it switches to a distance (Wasserstein), since
  a p-value then flags differences too small to matter: here the threshold is calibrated on
  clean windows instead of read off a p-value, so D stays.
- The predicted class (10 categories): Pearson's chi-square statistic of the window's counts
  against the reference's class frequencies, Evidently's choice for categorical data of up to
  1000 values. Under no drift it follows chi-square with 9 degrees of freedom, inflated by
  (1 + n / m) for a reference of m predictions: the threshold is the calibrated constant times
  that.
"""

from __future__ import annotations

import numpy as np

PROB_FLOOR = 1e-4  # a class the reference never predicted still gets this frequency


def quantile_grid(values: np.ndarray, k: int) -> np.ndarray:
    """K quantiles of `values` at the mid-points (i + 0.5) / K: a K-point summary. Each is one
    of the values (the empirical quantile, no interpolation), so values that tie, a box width
    or a confidence of 1.0, tie with their quantiles too."""
    probs = (np.arange(k) + 0.5) / k
    return np.quantile(np.asarray(values, dtype=np.float64), probs, method="inverted_cdf")


def ks_statistic(window: np.ndarray, reference: np.ndarray) -> float:
    """Two-sample KS D between `window` values and the sorted `reference` summary; ties
    handled (both empirical CDFs taken at every value either holds)."""
    w = np.sort(np.asarray(window, dtype=np.float64))
    points = np.concatenate([w, reference])
    fw = np.searchsorted(w, points, side="right") / len(w)
    fr = np.searchsorted(reference, points, side="right") / len(reference)
    return float(np.abs(fw - fr).max())


def ks_scale(n: int, k: int) -> float:
    """The factor that makes D's null distribution independent of the sizes."""
    return float(np.sqrt(n * k / (n + k)))


def chi_square(classes: np.ndarray, probabilities: np.ndarray) -> float:
    """Pearson's statistic of the window's predicted `classes` against class frequencies."""
    p = np.maximum(np.asarray(probabilities, dtype=np.float64), PROB_FLOOR)
    p = p / p.sum()
    n = len(classes)
    counts = np.bincount(np.asarray(classes, dtype=np.int64), minlength=len(p))[: len(p)]
    return float((((counts - n * p) ** 2) / (n * p)).sum())


def chi_square_scale(n: int, m: int) -> float:
    """The inflation of the statistic's null distribution by a reference of m values."""
    return 1.0 + n / m


def critical(statistics: np.ndarray, quantile: float, margin: float) -> float:
    """The calibrated constant: the `quantile` of scaled clean-window statistics, times
    `margin`."""
    return float(np.quantile(statistics, quantile) * margin)
