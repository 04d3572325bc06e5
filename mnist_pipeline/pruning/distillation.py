"""Fine-tuning a pruned LeNet-5 with knowledge distillation from the dense one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnist_pipeline.model import LeNet5
from mnist_pipeline.params.fit import OptimizerParams, SchedulerParams
from mnist_pipeline.training.lightning_module import LitLeNet5


class DistilledLitLeNet5(LitLeNet5):
    """`LitLeNet5` whose training loss adds the dense teacher's temperature-softened outputs."""

    def __init__(
        self,
        optimizer: OptimizerParams,
        scheduler: SchedulerParams,
        net: LeNet5,
        teacher: nn.Module,
        alpha: float,
        temperature: float,
    ) -> None:
        super().__init__(optimizer, scheduler, net=net)
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature

    def on_train_epoch_start(self) -> None:
        self.teacher.eval()  # Lightning puts every submodule in train mode

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch  # (B, 1, 28, 28), (B,)
        logits = self.net(x)  # (B, 10)
        with torch.no_grad():
            teacher = self.teacher(x) / self.temperature  # (B, 10)
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
        self.train_acc.update(logits.detach(), y)
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss
