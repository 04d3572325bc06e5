"""Streams of real MNIST test digits, shifted the ways deployed inputs drift, and a client that
sends one to `mnist-serve` (what the drift alert is tested with, and what docs/serving.md,
"Alerts", tells a person to run):

    python -m testing.shifted_streams inverted --url http://127.0.0.1:8000 --count 2000

Every shift takes and gives uint8 digits (N, 28, 28), light on dark like MNIST.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.request
from pathlib import Path

import numpy as np

from mnist_pipeline.data import mnist_files

# The test set, as the official files name it (mnist_files.FILES: train images, train labels,
# test images, test labels).
TEST_IMAGES, TEST_LABELS = (mnist_files.FILES[i][0] for i in (2, 3))
SHIFTS = ("clean", "inverted", "rotated", "noisy", "thickened", "one_class")
BATCH = 64  # digits per request: mnist-serve's default --max-files


def inverted(x: np.ndarray) -> np.ndarray:
    """Dark digits on a light ground: a scanner or a page that does not invert."""
    return 255 - x


def rotated(x: np.ndarray, degrees: float) -> np.ndarray:
    """Each digit turned `degrees` about the field's centre (bilinear, black fill)."""
    t = np.radians(degrees)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float64) - 13.5  # (28, 28) each
    # Where each output pixel comes from: the inverse rotation.
    sx = np.cos(t) * xx + np.sin(t) * yy + 13.5
    sy = -np.sin(t) * xx + np.cos(t) * yy + 13.5
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1)))  # (N, 30, 30)

    def at(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return padded[:, np.clip(y + 1, 0, 29), np.clip(x + 1, 0, 29)]

    out = (
        at(y0, x0) * (1 - fx) * (1 - fy)
        + at(y0, x0 + 1) * fx * (1 - fy)
        + at(y0 + 1, x0) * (1 - fx) * fy
        + at(y0 + 1, x0 + 1) * fx * fy
    )
    return out.round().clip(0, 255).astype(np.uint8)


def noisy(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Gaussian noise of `sigma` grey levels on every pixel, clipped to 0-255."""
    noise = np.random.default_rng(seed).normal(0.0, sigma, x.shape)
    return np.clip(x + noise, 0, 255).round().astype(np.uint8)


def thickened(x: np.ndarray) -> np.ndarray:
    """Strokes a pixel wider all round: each pixel the brightest of its 3x3 neighbourhood."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))  # (N, 30, 30)
    shifts = [padded[:, i : i + 28, j : j + 28] for i in range(3) for j in range(3)]
    return np.max(np.stack(shifts), axis=0)


def one_class(x: np.ndarray, y: np.ndarray, digit: int) -> np.ndarray:
    """Only the digits labelled `digit`: the classes' mix shifts, not the pixels."""
    return x[y == digit]


def shifted(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The stream `name` (one of SHIFTS) of the digits `x`, labels `y`, with the settings the
    alert test uses: rotated 30 degrees, noise of sigma 60, the digit 1 alone."""
    shifts = {
        "clean": lambda: x,
        "inverted": lambda: inverted(x),
        "rotated": lambda: rotated(x, 30.0),
        "noisy": lambda: noisy(x, 60.0, seed=0),
        "thickened": lambda: thickened(x),
        "one_class": lambda: one_class(x, y, 1),
    }
    return shifts[name]()


def load_test_set(mirror: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 test digits (N, 28, 28) uint8 and their labels, from the official files."""
    return mnist_files.read_idx(mirror / TEST_IMAGES), mnist_files.read_idx(mirror / TEST_LABELS)


def send(url: str, x: np.ndarray, batch: int = BATCH) -> list[int]:
    """POST the digits to `url`/predict as JSON pixels, `batch` a request; the digits
    predicted. Raises on any answer but 200."""
    predicted: list[int] = []
    for i in range(0, len(x), batch):
        body = json.dumps({"pixels": x[i : i + batch].tolist()}).encode()
        request = urllib.request.Request(
            f"{url}/predict", body, {"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            predicted += [p["digit"] for p in json.load(r)]
    return predicted


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m testing.shifted_streams", description=__doc__)
    p.add_argument("shift", choices=SHIFTS)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the mnist-serve to send to")
    p.add_argument("--count", type=int, default=2000, help="test digits to shift and send")
    p.add_argument("--start", type=int, default=0, help="where in the shuffled test set to start")
    p.add_argument("--seed", type=int, default=0, help="seed of the test set's shuffling")
    p.add_argument(
        "--mirror",
        type=Path,
        default=Path(os.environ.get("MNIST_MIRROR") or "data/raw"),
        help="folder of the official MNIST files (default: $MNIST_MIRROR, else data/raw)",
    )
    args = p.parse_args(argv)
    x, y = load_test_set(args.mirror)
    # Shuffled: the test set is in writer order (its first 5,000 digits come from other writers
    # than its last 5,000), so 2,000 consecutive digits are not a clean sample of MNIST, and
    # the drift monitor sees it (their strokes lean differently).
    order = np.random.default_rng(args.seed).permutation(len(x))[args.start :]
    stream = shifted(args.shift, x[order], y[order])[: args.count]
    predicted = send(args.url, stream)
    counts = np.bincount(predicted, minlength=10).tolist()
    print(f"sent {len(predicted)} {args.shift} digits; predicted per digit 0-9: {counts}")


if __name__ == "__main__":
    main()
