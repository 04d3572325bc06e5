"""The project's recipe as a plain PyTorch loop: the floor for the project's training path.

The same prepared tensors on the same device, the same batches in the same order
(`TensorBatches`, seeded by (seed, epoch)), the same `LeNet5`, optimizer, schedule, precision
and memory format, and validation as often; no Lightning, no metrics objects, no logging and no
checkpoints.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from benchmarks.clocks import EpochLog, Stopwatch, summary
from mnist_pipeline import compute as compute_mod
from mnist_pipeline.data.datamodule import TensorBatches
from mnist_pipeline.data.dataset import Split, load_split
from mnist_pipeline.model import LeNet5, accuracy
from mnist_pipeline.params.schema import ComputeParams, TrainParams
from mnist_pipeline.training.lightning_module import build_optimizer, build_scheduler
from mnist_pipeline.training.trainer import resolve_precision


def device_for(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "32-true":
        raise ValueError(f"the plain loop runs 32-true and bf16-mixed, not {precision}")
    return contextlib.nullcontext()


def run(
    params: TrainParams, compute: ComputeParams, data_dir: Path, target: float
) -> dict[str, Any]:
    watch = Stopwatch()
    compute_mod.apply(compute, check=False)  # the thread count; the kernels are this process's
    device = device_for(params.accelerator)
    precision = resolve_precision(params.precision, params.accelerator, compute.profile)
    fmt = torch.channels_last if params.channels_last else torch.contiguous_format

    def load(name: str) -> Split:
        s = load_split(data_dir, name)
        return Split(s.images.to(device, memory_format=fmt), s.labels.to(device))

    train, val = load("train"), load("val")
    pl.seed_everything(params.seed, verbose=False)  # as `stages.train`: same initial weights
    net = LeNet5().to(device, memory_format=fmt)
    opt = build_optimizer(params.optimizer, net)
    batches = TensorBatches(
        train, params.batch_size, shuffle=True, seed=params.seed, drop_last=True
    )
    cfg = build_scheduler(params.scheduler, opt, len(batches), params.max_epochs)
    sched, per_step = (cfg["scheduler"], cfg["interval"] == "step") if cfg else (None, False)
    test: Split | None = None
    log = EpochLog()
    for epoch in range(params.max_epochs):
        log.starts.append(watch.now())
        net.train()
        batches.sampler.set_epoch(epoch)
        for x, y in batches:
            with _autocast(device, precision):
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None and per_step:
                sched.step()
        if sched is not None and not per_step:
            sched.step()
        last = epoch + 1 == params.max_epochs
        if last or (epoch + 1) % params.val_every_n_epochs == 0:
            with _autocast(device, precision):
                accuracy(net, val.images, val.labels)  # validation, as the Trainer runs it
        with watch.leave_out():
            test = test or load("test")
            log.test_acc.append(accuracy(net, test.images, test.labels))
        log.ends.append(watch.now())
    log.done = watch.now()
    return {
        **summary(log, target, len(batches) * params.batch_size),
        "device": str(device),
        "precision": precision,
    }
