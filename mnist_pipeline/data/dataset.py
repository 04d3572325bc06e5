"""The prepared dataset: normalized tensors per split, stored as safetensors.

Layout of the `prepare` output folder: `train.safetensors`, `val.safetensors`,
`test.safetensors` (tensors `images` float32 (N, 1, 28, 28), normalized with the training
split's mean and std, and `labels` int64 (N,)) and `meta.json` (mean, std, sizes, sources).
safetensors loads without unpickling anything. Writing needs numpy only, so `prepare` runs
without torch; reading gives torch tensors for training and evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnist_pipeline.atomic import write_json, write_safetensors
from mnist_pipeline.errors import StageError

if TYPE_CHECKING:
    import torch

# A split as `prepare` makes it: images float32 (N, 1, 28, 28), normalized; labels int64 (N,).
Arrays = tuple[np.ndarray, np.ndarray]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 1, 28, 28) float32, normalized
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass(frozen=True)
class Normalization:
    mean: float  # of pixel/255 over the training split
    std: float

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Raw 0-255 pixels (any dtype) to normalized float32: the arithmetic of
        `model.RawPixelsLeNet5`, float32 throughout."""
        return (pixels.astype(np.float32) / 255.0 - self.mean) / self.std

    def invert(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized images back to the exact uint8 pixels they came from."""
        import torch

        return ((images * self.std + self.mean) * 255.0).round().clamp(0, 255).to(torch.uint8)


def split_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded shuffle of range(n) cut into (train, val) index arrays."""
    if not 0 < val_size < n:
        raise StageError(f"prepare.val_size must be between 1 and {n - 1}, got {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def fit_normalization(train_pixels: np.ndarray) -> Normalization:
    x = train_pixels.astype(np.float64) / 255.0
    return Normalization(mean=float(x.mean()), std=float(x.std()))


def make_splits(
    raw: dict[str, np.ndarray], val_size: int, seed: int
) -> tuple[dict[str, Arrays], Normalization]:
    """Carve the validation split from the training set and normalize all three once."""
    tr, va = split_indices(len(raw["train_labels"]), val_size, seed)
    pixels = {
        "train": (raw["train_images"][tr], raw["train_labels"][tr]),
        "val": (raw["train_images"][va], raw["train_labels"][va]),
        "test": (raw["test_images"], raw["test_labels"]),
    }
    norm = fit_normalization(pixels["train"][0])
    splits = {
        name: (
            np.ascontiguousarray(norm.apply(imgs)[:, None]),  # (N, 1, 28, 28)
            labels.astype(np.int64),
        )
        for name, (imgs, labels) in pixels.items()
    }
    return splits, norm


def save_splits(
    out_dir: Path, splits: dict[str, Arrays], norm: Normalization, extra: dict | None = None
) -> None:
    """Write into `out_dir`, which the caller makes atomic (`atomic.atomic_dir`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "mean": norm.mean,
        "std": norm.std,
        "sizes": {k: len(labels) for k, (_, labels) in splits.items()},
    }
    meta.update(extra or {})
    for name, (images, labels) in splits.items():
        write_safetensors(
            out_dir / f"{name}.safetensors",
            {"images": images, "labels": labels},
            metadata={"mean": repr(norm.mean), "std": repr(norm.std)},
        )
    write_json(out_dir / "meta.json", meta)


def load_normalization(data_dir: Path) -> Normalization:
    meta = json.loads(_need(data_dir / "meta.json").read_text())
    return Normalization(mean=float(meta["mean"]), std=float(meta["std"]))


def split_sizes(data_dir: Path) -> dict[str, int]:
    meta = json.loads(_need(data_dir / "meta.json").read_text())
    return {k: int(v) for k, v in meta["sizes"].items()}


def load_split(data_dir: Path, name: str) -> Split:
    from safetensors.torch import load_file

    tensors = load_file(str(_need(data_dir / f"{name}.safetensors")))
    return Split(images=tensors["images"], labels=tensors["labels"])


def _need(path: Path) -> Path:
    if not path.is_file():
        raise StageError(f"{path} not found: run the `prepare` stage first (`dvc repro prepare`)")
    return path
