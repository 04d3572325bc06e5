"""Distillation in `prune`: the teacher's soft targets computed once per run, carried by the
training batches next to the images they belong to, and the loss they feed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mnist_pipeline.data.datamodule import TensorBatches
from mnist_pipeline.data.dataset import Split, load_split
from mnist_pipeline.model import LeNet5, load_model
from mnist_pipeline.params.schema import Params
from mnist_pipeline.pruning import distillation
from mnist_pipeline.pruning import rounds as prune_rounds
from mnist_pipeline.pruning import structured as pruning


def test_distillation_loss_is_zero_when_the_student_copies_the_teacher(
    tiny_params: Params,
) -> None:
    net = LeNet5()
    ft = tiny_params.prune.finetune
    lit = distillation.DistilledLitLeNet5(
        ft.optimizer, ft.scheduler, net, alpha=1.0, temperature=4.0
    )
    assert not any(isinstance(m, LeNet5) for m in lit.modules() if m is not net)  # no teacher
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    with torch.no_grad():
        same = net(x)
    assert lit.training_step((x, y, same), 0).item() == pytest.approx(0.0, abs=1e-6)
    assert lit.training_step((x, y, same + 10 * torch.eye(10)[y]), 0).item() > 0.1
    lit.alpha = 0.0
    loss = lit.training_step((x, y, same), 0)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(net(x), y).item())


def test_soft_target_batches_keep_each_teacher_output_with_its_image() -> None:
    ids = torch.arange(50)
    split = Split(images=ids.float().view(50, 1, 1, 1).expand(50, 1, 28, 28), labels=ids)
    logits = ids.float().view(50, 1).repeat(1, 10)  # (50, 10): sample i's row is all i
    soft = list(distillation.SoftTargetBatches(split, logits, batch_size=8, seed=3))
    plain = list(TensorBatches(split, 8, shuffle=True, seed=3, drop_last=True))
    assert len(soft) == len(plain) == 6  # full batches only, as the plain training batches
    for (x, y, t), (px, py) in zip(soft, plain, strict=True):
        assert torch.equal(y, py) and torch.equal(x, px)  # the same epoch order
        assert torch.equal(t, y.float().view(-1, 1).repeat(1, 10))  # each row with its image
    assert not torch.equal(soft[0][1], ids[:8])  # shuffled


def test_the_teacher_runs_once_per_run_not_per_step(
    monkeypatch: pytest.MonkeyPatch, trained_model: Path, prepared: Path, tiny_params: Params
) -> None:
    calls: list[int] = []
    forwards: list[int] = []
    real = distillation.teacher_logits

    def counting(teacher: torch.nn.Module, images: torch.Tensor, bs: int) -> torch.Tensor:
        calls.append(len(images))
        teacher.register_forward_hook(lambda *_: forwards.append(1))
        return real(teacher, images, bs)

    monkeypatch.setattr(prune_rounds, "teacher_logits", counting)
    params = tiny_params.prune.model_copy(update={"rounds": 2})
    assert params.distill.alpha > 0 and params.finetune.epochs > 0
    dense, _ = load_model(trained_model)
    test = load_split(prepared, "test")
    net, report = prune_rounds.prune_and_finetune(
        dense, params, tiny_params.train, tiny_params.compute, prepared, test
    )
    n_train = len(load_split(prepared, "train"))
    assert calls == [n_train]  # one pass over the training split for 2 rounds of fine-tuning
    steps = 2 * params.finetune.epochs * (n_train // tiny_params.train.batch_size)
    assert len(forwards) == -(-n_train // tiny_params.train.eval_batch_size) < steps
    assert set(report) >= {"round1", "round2"}
    assert pruning.count_macs(net) < pruning.count_macs(dense)
