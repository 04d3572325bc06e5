"""What the drift monitor measures of each digit: features that separate real MNIST digits
from shifted ones (inverted, rotated, noisy, thick), computed in numpy on raw 0-255 pixels.

    ink_mass        fraction of the 784 pixels that are ink (> half intensity)
    mean_intensity  mean pixel, 0-1
    background      mean pixel of the 3-pixel frame around the digit's field, 0-1
    centroid_x/_y   intensity-weighted centre, in pixels from the top-left corner
    bbox_width/_height  the box around the ink pixels, in pixels
    orientation     the principal axis of the ink, in degrees from vertical (second moments)
"""

from __future__ import annotations

import numpy as np

FEATURES = (
    "ink_mass",
    "mean_intensity",
    "background",
    "centroid_x",
    "centroid_y",
    "bbox_width",
    "bbox_height",
    "orientation",
)
INK = 128  # a pixel at or above this is ink
FRAME = 3  # MNIST centres its digits in a 20x20 box: the outer 4 pixels are nearly empty


DECIMALS = 4  # features are rounded to this: the profile's quantiles hold them exactly


def extract(pixels: np.ndarray) -> np.ndarray:
    """The features (N, len(FEATURES)) float64 of digits (N, 28, 28), raw 0-255 pixels."""
    x = np.asarray(pixels, dtype=np.float64).reshape(len(pixels), 28, 28) / 255.0  # (N, 28, 28)
    ink = x >= INK / 255.0  # (N, 28, 28)
    mass = x.sum(axis=(1, 2))  # (N,)
    safe = np.where(mass > 0, mass, 1.0)
    idx = np.arange(28, dtype=np.float64)
    cy = (x.sum(axis=2) * idx).sum(axis=1) / safe  # (N,)
    cx = (x.sum(axis=1) * idx).sum(axis=1) / safe
    dy, dx = idx[None, :, None] - cy[:, None, None], idx[None, None, :] - cx[:, None, None]
    mu20 = (x * dx * dx).sum(axis=(1, 2)) / safe
    mu02 = (x * dy * dy).sum(axis=(1, 2)) / safe
    mu11 = (x * dx * dy).sum(axis=(1, 2)) / safe
    # The principal axis against the vertical, in (-90, 90]: 0 for an upright stroke.
    orientation = np.degrees(0.5 * np.arctan2(2 * mu11, mu02 - mu20))
    frame = np.ones((28, 28), dtype=bool)
    frame[FRAME:-FRAME, FRAME:-FRAME] = False
    rows, cols = np.any(ink, axis=2), np.any(ink, axis=1)  # (N, 28) each
    feats = np.stack(
        [
            ink.mean(axis=(1, 2)),
            x.mean(axis=(1, 2)),
            x[:, frame].mean(axis=1),
            np.where(mass > 0, cx, 13.5),
            np.where(mass > 0, cy, 13.5),
            _extent(cols),
            _extent(rows),
            orientation,
        ],
        axis=1,
    )
    return np.round(feats, DECIMALS)


def _extent(occupied: np.ndarray) -> np.ndarray:
    """The span (N,) of the True entries of each row of (N, 28), 0 where none."""
    any_ = occupied.any(axis=1)
    first = occupied.argmax(axis=1)
    last = 27 - occupied[:, ::-1].argmax(axis=1)
    return np.where(any_, last - first + 1, 0).astype(np.float64)
