"""Fine-tuning a pruned LeNet-5 with knowledge distillation from the dense one.

The dense teacher's logits over the training split are computed once per run
(`teacher_logits`): there is no augmentation, so a sample's soft target never changes, and a
fine-tuning step costs the student's forward and backward only. The training batches carry
them (`SoftTargetDataModule`: images, labels and the teacher's logits, sliced by the same
indices).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mnist_pipeline.data.datamodule import MNISTDataModule, TensorBatches
from mnist_pipeline.data.dataset import Split
from mnist_pipeline.model import LeNet5
from mnist_pipeline.params.fit import OptimizerParams, SchedulerParams
from mnist_pipeline.training.lightning_module import LitLeNet5

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@torch.no_grad()
def teacher_logits(teacher: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The teacher's logits for every image, in eval mode: (N, 10), on the images' device."""
    teacher.eval()
    parts = [teacher(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(parts)  # (N, 10)


class SoftTargetBatches(TensorBatches):
    """`TensorBatches` of (images, labels, teacher logits), in the same epoch order."""

    def __init__(self, split: Split, logits: torch.Tensor, batch_size: int, seed: int) -> None:
        super().__init__(split, batch_size, shuffle=True, seed=seed, drop_last=True)
        self.logits = logits.to(split.images.device)  # (N, 10)

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        idx = self.sampler.order().to(self.split.images.device)
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.split.images[sel], self.split.labels[sel], self.logits[sel]


class SoftTargetDataModule(MNISTDataModule):
    """`MNISTDataModule` whose training batches carry the teacher's logits (one process: prune
    runs where DVC runs it)."""

    def __init__(self, base: MNISTDataModule, logits: torch.Tensor) -> None:
        super().__init__(
            base.data_dir, base.batch_size, base.eval_batch_size, base.seed, base.channels_last
        )
        self.splits = base.splits
        self.logits = logits  # (N_train, 10), in the training split's order

    def train_dataloader(self) -> SoftTargetBatches:
        return SoftTargetBatches(self.splits["train"], self.logits, self.batch_size, self.seed)


class DistilledLitLeNet5(LitLeNet5):
    """`LitLeNet5` whose training loss adds the dense teacher's temperature-softened outputs,
    read from the batch (its third tensor) rather than computed at each step."""

    def __init__(
        self,
        optimizer: OptimizerParams,
        scheduler: SchedulerParams,
        net: LeNet5,
        alpha: float,
        temperature: float,
    ) -> None:
        super().__init__(optimizer, scheduler, net=net)
        self.alpha, self.temperature = alpha, temperature

    def training_step(self, batch: Batch, _: int) -> torch.Tensor:  # type: ignore[override]
        x, y, teacher_out = batch  # (B, 1, 28, 28), (B,), (B, 10)
        logits = self.net(x)  # (B, 10)
        teacher = teacher_out / self.temperature
        p_teacher, log_p_teacher = F.softmax(teacher, dim=1), F.log_softmax(teacher, dim=1)
        # KL(teacher || student), batch mean: F.kl_div's value, written out with softmax and
        # log_softmax, whose kernels are PyTorch's own; F.kl_div would take torch.exp, which
        # MKL's VML computes with a code path chosen by CPU vendor (mnist_pipeline.compute).
        log_p_student = F.log_softmax(logits / self.temperature, dim=1)
        kd = (p_teacher * (log_p_teacher - log_p_student)).sum() / x.shape[0]
        # T^2 keeps the soft-target gradients on the scale of the hard-label ones (Hinton 2015).
        loss = (1 - self.alpha) * F.cross_entropy(logits, y) + (
            self.alpha * self.temperature**2 * kd
        )
        self.track_train(loss, logits, y)
        return loss
