"""Streams of digits for the drift tests and the drift benchmark: clean ones drawn from a set
of real digits, and shifted ones made from them by `testing.shifted_streams` (inverted, rotated,
noisy, thickened, one class only). Pixels uint8 (N, 28, 28), raw 0-255 as the server gets them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from testing.shifted_streams import inverted, noisy, rotated, thickened

ROTATION_DEG, NOISE_SIGMA, ONE_CLASS = 30.0, 60.0, 1


def stream(
    pixels: np.ndarray, labels: np.ndarray, kind: str, length: int, seed: int
) -> np.ndarray:
    """`length` digits drawn (seeded, without replacement while they last) from `pixels`,
    shifted as `kind` says: one of STREAMS."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(labels == ONE_CLASS) if kind == "one_class" else np.arange(len(labels))
    order = np.concatenate([rng.permutation(pool) for _ in range(-(-length // len(pool)))])
    picked = pixels[order[:length]]
    return noisy(picked, NOISE_SIGMA, seed) if kind == "noise" else SHIFTS[kind](picked)


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "clean": lambda p: p,
    "inverted": inverted,
    "rotated_30": lambda p: rotated(p, ROTATION_DEG),
    "thickened": thickened,
    "one_class": lambda p: p,
}  # and "noise", seeded
STREAMS = ("clean", "inverted", "rotated_30", "noise", "thickened", "one_class")
