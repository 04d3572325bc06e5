"""Streams of digits for the drift tests and the drift benchmark: clean ones drawn from a set
of real digits, and shifted ones made from them (inverted, rotated, noisy, thickened, one
class only). numpy only; pixels uint8 (N, 28, 28), raw 0-255 as the server gets them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ROTATION_DEG, NOISE_SIGMA, ONE_CLASS = 30.0, 60.0, 1


def inverted(pixels: np.ndarray) -> np.ndarray:
    return 255 - pixels


def rotated(pixels: np.ndarray, degrees: float = ROTATION_DEG) -> np.ndarray:
    """Each digit turned about the field's centre, bilinear, zero outside."""
    t = np.radians(degrees)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float64) - 13.5  # (28, 28) each
    # Where each output pixel comes from: the inverse rotation.
    sx = np.cos(t) * xx + np.sin(t) * yy + 13.5
    sy = -np.sin(t) * xx + np.cos(t) * yy + 13.5
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0
    padded = np.pad(pixels.astype(np.float64), ((0, 0), (1, 1), (1, 1)))  # (N, 30, 30)

    def at(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return padded[:, np.clip(y + 1, 0, 29), np.clip(x + 1, 0, 29)]

    out = (
        at(y0, x0) * (1 - fx) * (1 - fy)
        + at(y0, x0 + 1) * fx * (1 - fy)
        + at(y0 + 1, x0) * (1 - fx) * fy
        + at(y0 + 1, x0 + 1) * fx * fy
    )
    return out.round().clip(0, 255).astype(np.uint8)


def noisy(pixels: np.ndarray, seed: int, sigma: float = NOISE_SIGMA) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, pixels.shape)
    return (pixels + noise).round().clip(0, 255).astype(np.uint8)


def thickened(pixels: np.ndarray) -> np.ndarray:
    """Strokes dilated by one pixel each way (a 3x3 maximum filter)."""
    padded = np.pad(pixels, ((0, 0), (1, 1), (1, 1)))
    shifts = [padded[:, dy : dy + 28, dx : dx + 28] for dy in range(3) for dx in range(3)]
    return np.max(np.stack(shifts), axis=0)


def stream(
    pixels: np.ndarray, labels: np.ndarray, kind: str, length: int, seed: int
) -> np.ndarray:
    """`length` digits drawn (seeded, without replacement while they last) from `pixels`,
    shifted as `kind` says: one of STREAMS."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(labels == ONE_CLASS) if kind == "one_class" else np.arange(len(labels))
    order = np.concatenate([rng.permutation(pool) for _ in range(-(-length // len(pool)))])
    picked = pixels[order[:length]]
    return noisy(picked, seed) if kind == "noise" else SHIFTS[kind](picked)


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "clean": lambda p: p,
    "inverted": inverted,
    "rotated_30": rotated,
    "thickened": thickened,
    "one_class": lambda p: p,
}  # and "noise", seeded
STREAMS = ("clean", "inverted", "rotated_30", "noise", "thickened", "one_class")
