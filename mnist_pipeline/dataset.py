"""The prepared dataset: normalized tensors per split, stored as safetensors.

Layout of the `prepare` output folder: `train.safetensors`, `val.safetensors`,
`test.safetensors` (tensors `images` float32 (N, 1, 28, 28), normalized with the training
split's mean and std, and `labels` int64 (N,)) and `meta.json` (mean, std, sizes, sources).
safetensors loads without unpickling anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from mnist_pipeline.atomic import write_json, write_safetensors
from mnist_pipeline.errors import StageError

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

    def apply(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw 0-255 pixels (any dtype) to normalized float32."""
        return (pixels.float() / 255.0 - self.mean) / self.std

    def invert(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized images back to the exact uint8 pixels they came from."""
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
) -> tuple[dict[str, Split], Normalization]:
    """Carve the validation split from the training set and normalize all three once."""
    tr, va = split_indices(len(raw["train_labels"]), val_size, seed)
    pixels = {
        "train": (raw["train_images"][tr], raw["train_labels"][tr]),
        "val": (raw["train_images"][va], raw["train_labels"][va]),
        "test": (raw["test_images"], raw["test_labels"]),
    }
    norm = fit_normalization(pixels["train"][0])
    splits = {
        name: Split(
            images=norm.apply(torch.from_numpy(imgs.copy())).unsqueeze(1).contiguous(),
            labels=torch.from_numpy(labels.astype(np.int64)),
        )
        for name, (imgs, labels) in pixels.items()
    }
    return splits, norm


def save_splits(
    out_dir: Path, splits: dict[str, Split], norm: Normalization, extra: dict | None = None
) -> None:
    """Write into `out_dir`, which the caller makes atomic (`atomic.atomic_dir`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"mean": norm.mean, "std": norm.std, "sizes": {k: len(v) for k, v in splits.items()}}
    meta.update(extra or {})
    for name, split in splits.items():
        write_safetensors(
            out_dir / f"{name}.safetensors",
            {"images": split.images, "labels": split.labels},
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
    tensors = load_file(str(_need(data_dir / f"{name}.safetensors")))
    return Split(images=tensors["images"], labels=tensors["labels"])


def _need(path: Path) -> Path:
    if not path.is_file():
        raise StageError(f"{path} not found: run the `prepare` stage first (`dvc repro prepare`)")
    return path
