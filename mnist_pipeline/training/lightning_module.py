"""The LightningModule that trains a `LeNet5`: loss, metrics, optimizer and LR schedule."""

from __future__ import annotations

from typing import Any, cast

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_pipeline.model import LeNet5, Widths
from mnist_pipeline.params.fit import OptimizerParams, SchedulerParams


def build_optimizer(params: OptimizerParams, model: torch.nn.Module) -> torch.optim.Optimizer:
    if params.name == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=params.lr,
            momentum=params.momentum,
            nesterov=params.nesterov and params.momentum > 0,
            weight_decay=params.weight_decay,
        )
    cls = torch.optim.AdamW if params.name == "adamw" else torch.optim.Adam
    # fused: one kernel of PyTorch's own (CPU and GPU) whose square root is the exact IEEE
    # one; the default path takes torch.sqrt through MKL's VML, whose code path MKL chooses by
    # CPU vendor, so the weights would differ in the last bits between Intel and AMD.
    return cls(model.parameters(), lr=params.lr, weight_decay=params.weight_decay, fused=True)


def build_scheduler(
    params: SchedulerParams, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int
) -> dict[str, Any] | None:
    """A Lightning lr_scheduler config, stepped per batch or per epoch as the schedule needs."""
    total = max(1, steps_per_epoch * epochs)
    if params.name == "none":
        return None
    if params.name == "onecycle":
        lr = optimizer.param_groups[0]["lr"]
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=total, pct_start=params.pct_start
        )
        return {"scheduler": sched, "interval": "step"}
    if params.name == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"scheduler": sched, "interval": "step"}
    sched = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=params.step_size, gamma=params.gamma
    )
    return {"scheduler": sched, "interval": "epoch"}


class LitLeNet5(pl.LightningModule):
    def __init__(
        self,
        optimizer: OptimizerParams,
        scheduler: SchedulerParams,
        widths: Widths | None = None,
        net: LeNet5 | None = None,
    ) -> None:
        super().__init__()
        self.net = net if net is not None else LeNet5(widths)
        self.optimizer_params, self.scheduler_params = optimizer, scheduler
        # validate_args=False: its label check (torch.unique) would sync a GPU every step; the
        # labels were checked by `prepare`.
        self.train_acc = MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=10, average="micro")
        # The epoch's mean training loss, weighted by batch size, kept on the device.
        # nan_strategy="disable": its NaN check would sync a GPU every step.
        self.train_loss = MeanMetric(nan_strategy="disable")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch  # (B, 1, 28, 28), (B,)
        logits = self.net(x)  # (B, 10)
        loss = F.cross_entropy(logits, y)
        self.track_train(loss, logits, y)
        return loss

    def track_train(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Add a step to the epoch's training loss and accuracy, logged once at its end: a
        `self.log` in every step costs host work per call (Lightning moves its result object to
        the device each time)."""
        self.train_acc.update(logits.detach(), y)
        self.train_loss.update(loss.detach(), weight=len(y))

    def on_train_epoch_end(self) -> None:
        if not self.train_loss.update_called:  # a subclass that logs per step itself
            return
        # compute() syncs the ranks itself; sync_dist=True only tells Lightning so (one more
        # all-reduce of equal values per epoch, instead of a warning under DDP).
        self.log("train/loss", self.train_loss.compute(), sync_dist=True)
        self.log("train/acc", self.train_acc.compute(), sync_dist=True)
        self.train_acc.reset()
        self.train_loss.reset()

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> None:
        x, y = batch
        logits = self.net(x)
        acc = self.val_acc if split == "val" else self.test_acc
        acc.update(logits, y)
        self.log(
            f"{split}/loss",
            F.cross_entropy(logits, y),
            on_epoch=True,
            sync_dist=True,
            batch_size=len(y),
        )
        self.log(f"{split}/acc", acc, on_epoch=True, prog_bar=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self) -> Any:
        opt = build_optimizer(self.optimizer_params, self.net)
        # Ints by the time Lightning asks: the Trainer was built with a finite `max_epochs`.
        epochs = cast(int, self.trainer.max_epochs)
        steps = cast(int, self.trainer.estimated_stepping_batches) // max(1, epochs)
        sched = build_scheduler(self.scheduler_params, opt, steps, epochs)
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}
