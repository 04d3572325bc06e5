"""The seed tutorial's recipe, made runnable: the baseline the project's training is held to.

torchvision's `MNIST` dataset read from raw files (never downloaded), a per-sample
`ToTensor()` + `Normalize((0.5,), (0.5,))`, `DataLoader(batch_size=64, num_workers=4)`, the
project's `LeNet5` in a minimal LightningModule, Adam at 1e-3, and Lightning's `Trainer`
defaults (progress bar, model summary, logger, checkpointing) except the number of epochs.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import MNIST

from benchmarks.clocks import EpochTimer, Stopwatch, summary
from mnist_pipeline.data import mnist_files
from mnist_pipeline.model import LeNet5, accuracy

BATCH_SIZE, NUM_WORKERS, LR = 64, 4, 1e-3


def torchvision_root(mirror: Path, root: Path) -> Path:
    """Unpack the four mirror files into torchvision's layout, `<root>/MNIST/raw/`."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, _ in mnist_files.FILES:
        dst = raw / name.removesuffix(".gz")
        if not dst.is_file():
            tmp = dst.with_suffix(".tmp")
            with gzip.open(mirror / name, "rb") as src, tmp.open("wb") as out:
                shutil.copyfileobj(src, out)
            tmp.replace(dst)
    return root


class SeedModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = LeNet5()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=LR)


def run(
    root: Path, workdir: Path, epochs: int, limit_batches: int | None, target: float, seed: int
) -> dict[str, Any]:
    """Fit for `epochs` (of at most `limit_batches` batches each) and return the clock's
    summary; the test accuracy after each epoch is measured outside the clock."""
    watch = Stopwatch()
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    train = MNIST(str(root), train=True, download=False, transform=tf)
    test = MNIST(str(root), train=False, download=False)
    # The same arithmetic as the transform, done once for the whole test set.
    test_x = ((test.data.float() / 255.0 - 0.5) / 0.5).unsqueeze(1)  # (N, 1, 28, 28)
    pl.seed_everything(seed, verbose=False)
    loader = DataLoader(train, batch_size=BATCH_SIZE, shuffle=True, num_workers=NUM_WORKERS)
    timer = EpochTimer(watch, lambda net: accuracy(net, test_x, test.targets))
    trainer = pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=limit_batches,
        default_root_dir=workdir,
        callbacks=[timer],
    )
    trainer.fit(SeedModule(), train_dataloaders=loader)
    batches = len(loader) if limit_batches is None else min(limit_batches, len(loader))
    images = len(train) if batches == len(loader) else batches * BATCH_SIZE
    return {
        **summary(timer.record, target, images),
        "device": str(trainer.strategy.root_device),
        "precision": trainer.precision,
    }
