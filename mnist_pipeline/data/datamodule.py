"""The prepared MNIST splits held in memory as tensors, batched by index slicing.

No per-sample transforms and no DataLoader workers: the whole split sits on the training
device (the GPU when training on one) and a batch is `images[idx]`. Shuffling is seeded by
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from mnist_pipeline.data.dataset import Split, load_split


class EpochShuffle:
    """The order of one epoch's samples; Lightning calls `set_epoch` on a loader's `sampler`."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g)


class TensorBatches:
    """An iterable of (images, labels) batches sliced from in-memory tensors.

    Under DDP each rank takes every `world_size`-th sample of the shared epoch order, cut to
    the same length on every rank so they step in lockstep.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        # Lightning reads a loader's `sampler` (to call set_epoch) and `batch_sampler`.
        self.sampler = EpochShuffle(len(split), seed, shuffle)
        self.batch_sampler = None
        self.per_rank = len(split) // world_size if world_size > 1 else len(split)

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.sampler.order()
        if self.world_size > 1:
            idx = idx[self.rank :: self.world_size][: self.per_rank]
        idx = idx.to(self.split.images.device)
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.split.images[sel], self.split.labels[sel]


class MNISTDataModule(pl.LightningDataModule):
    def __init__(
        self,
        data_dir: Path,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.channels_last = channels_last
        self.splits: dict[str, Split] = {}

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        names = (
            ("train", "val") if stage == "fit" else ("val",) if stage == "validate" else ("test",)
        )
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for name in names:
            if name not in self.splits:
                s = load_split(self.data_dir, name)
                self.splits[name] = Split(
                    images=s.images.to(device, memory_format=fmt), labels=s.labels.to(device)
                )

    # The batch size travels in checkpoints, so a resumed run keeps a tuned one.
    def state_dict(self) -> dict[str, int]:
        return {"batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_size = int(state.get("batch_size", self.batch_size))

    def _ranks(self) -> dict[str, Any]:
        if self.trainer is None:
            return {"rank": 0, "world_size": 1}
        return {"rank": self.trainer.global_rank, "world_size": self.trainer.world_size}

    def train_dataloader(self) -> TensorBatches:
        # drop_last keeps every step's batch full, so BatchNorm-free LeNet sees equal-weight steps
        # and the step count per epoch is exact for OneCycle.
        return TensorBatches(
            self.splits["train"],
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
            **self._ranks(),
        )

    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(
            self.splits["val"], self.eval_batch_size, shuffle=False, **self._ranks()
        )

    def test_dataloader(self) -> TensorBatches:
        return TensorBatches(
            self.splits["test"], self.eval_batch_size, shuffle=False, **self._ranks()
        )
