"""Tiny synthetic MNIST in the real file format, written through the project's own writers.

Each class is a fixed random 28x28 stroke pattern plus noise, so a LeNet learns it in one or
two epochs on a few hundred images: the tests check behaviour (accuracy, resume, parity), not
that code merely ran.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_pipeline.data import mnist_files


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(1234).random((10, 28, 28)) > 0.8  # (10, 28, 28) bool
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    noise = rng.integers(0, 60, size=(n, 28, 28))
    images = np.where(protos[labels], 255 - noise, noise).astype(np.uint8)  # (n, 28, 28)
    images[:, :2, :] = 0  # dark borders like real MNIST
    images[:, -2:, :] = 0
    return images, labels


def write_mirror(folder: Path, n_train: int = 600, n_test: int = 200) -> Path:
    """Write the four .gz files and an MD5SUMS file for them; return the MD5SUMS path."""
    folder.mkdir(parents=True, exist_ok=True)
    (tri, _), (trl, _), (tei, _), (tel, _) = mnist_files.FILES
    train_x, train_y = make_images(n_train, seed=1)
    test_x, test_y = make_images(n_test, seed=2)
    for name, arr in ((tri, train_x), (trl, train_y), (tei, test_x), (tel, test_y)):
        mnist_files.write_idx(folder / name, arr)
    sums = folder / "MD5SUMS"
    sums.write_text(
        "".join(f"{mnist_files.md5sum(folder / n)}  {n}\n" for n, _ in mnist_files.FILES)
    )
    return sums
