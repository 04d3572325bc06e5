"""The resumable fit: LeNet-5 trained with Lightning, from a fingerprinted checkpoint or afresh.

A run resumes from `<ckpt-dir>/last.ckpt` only when that checkpoint carries the same
fingerprint (see `mnist_pipeline.training.checkpoints`); otherwise it starts fresh and says
why. The `train` stage writes what this returns.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch import nn

from mnist_pipeline import compute as compute_mod
from mnist_pipeline import plugins
from mnist_pipeline.params.fit import PluginSpec
from mnist_pipeline.params.schema import ComputeParams, TrainParams
from mnist_pipeline.training import checkpoints
from mnist_pipeline.training.checkpoints import LAST, METRICS_KEY
from mnist_pipeline.training.lightning_module import LitLeNet5
from mnist_pipeline.training.trainer import (
    make_datamodule,
    make_trainer,
    resolve_precision,
    tune_batch_size,
)

log = logging.getLogger(__name__)


def used_plugins(params: TrainParams) -> list[plugins.Loaded]:
    """The model, callback and logger plugins `params` names, found by name (in that order)."""
    specs: list[PluginSpec] = [params.model, *params.callbacks, *params.loggers]
    return [plugins.load(spec.kind, spec.name) for spec in specs]


def fingerprint(params: TrainParams, compute: ComputeParams, data_dir: Path) -> str:
    """The resume fingerprint of a `train` run: params, data, training code (the plugins' that
    change results among it, with their distributions' versions), environment and how the
    process computes (`mnist_pipeline.compute.apply`'s facts)."""
    computed = compute_mod.apply(compute)
    files = [data_dir / name for name in ("meta.json", "train.safetensors", "val.safetensors")]
    changing = [p for p in used_plugins(params) if p.plugin.changes_results]
    code = (
        *checkpoints.TRAINING_CODE,
        sys.modules[__name__],
        *(sys.modules[p.module] for p in changing),
    )
    precision = resolve_precision(params.precision, params.accelerator, compute.profile)
    sources = [p.source() for p in changing]
    return checkpoints.fingerprint(params, precision, computed, files, code, sources)


def train(
    params: TrainParams,
    compute: ComputeParams,
    data_dir: Path,
    ckpt_dir: Path,
    live_dir: Path,
    fail_after_epoch: int | None = None,
    extra_callbacks: Sequence[Callback] = (),
) -> tuple[nn.Module, dict[str, Any]]:
    """Fit (or resume fitting) and return the trained net with a summary of the run.

    The net, the callbacks after the checkpointing, and the loggers are the plugins `params`
    names (`train.model`, `train.callbacks`, `train.loggers`). `extra_callbacks` observe the fit
    without changing it (the benchmarks' clocks).
    """
    fp = fingerprint(params, compute, data_dir)
    resume_from = _resumable_or_cleared(ckpt_dir, fp)
    resumed_from_epoch = checkpoints.epochs_done(resume_from)  # read now: fit overwrites it
    pl.seed_everything(params.seed, workers=True, verbose=False)
    # Built right after seeding, as the built-in LeNet-5 always was: the same initial weights.
    net = plugins.build("model", params.model.name, params.model.args)
    lit = LitLeNet5(params.optimizer, params.scheduler, net=net)
    if params.channels_last:
        lit = lit.to(memory_format=torch.channels_last)
    if params.compile:
        lit.net.compile()  # in place: parameter names, checkpoints and saved models unchanged
    callbacks = _checkpointing(fp, resumed_from_epoch, ckpt_dir)
    callbacks.extend(plugins.build("callback", c.name, c.args) for c in params.callbacks)
    if fail_after_epoch is not None and resume_from is None:
        callbacks.append(checkpoints.KillAfterEpoch(fail_after_epoch))
    context = plugins.LoggerContext(
        live_dir, resume_from is not None, "train", flat_params(params.model_dump(mode="json"))
    )
    loggers = [plugins.build("logger", lg.name, lg.args, context) for lg in params.loggers]
    callbacks.extend(context.callbacks)  # what the loggers observe the fit with
    callbacks.extend(extra_callbacks)
    trainer = make_trainer(
        params,
        compute,
        params.max_epochs,
        callbacks,
        loggers[0] if len(loggers) == 1 else loggers,
        ckpt_dir,
    )
    data = make_datamodule(params, data_dir)
    start = time.perf_counter()
    if params.tune_batch_size and resume_from is None:
        start_batch = data.batch_size
        tune_batch_size(trainer, lit, data)
        log.info("batch size tuned: %d -> %d", start_batch, data.batch_size)
    # weights_only: never unpickle code, even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD set.
    trainer.fit(lit, datamodule=data, ckpt_path=resume_from, weights_only=True)
    fit_s = time.perf_counter() - start
    # The final checkpoint's metrics, not the trainer's: a run that resumes a finished
    # checkpoint trains nothing, and must report what that checkpoint's run did.
    metrics = checkpoints.saved(ckpt_dir / LAST, METRICS_KEY) or {}
    summary = {
        "epochs": trainer.current_epoch,
        "resumed_from_epoch": resumed_from_epoch,
        "fit_time_s": round(fit_s, 3),
        "batch_size": data.batch_size,
        "world_size": trainer.world_size,
        "val_acc": metrics.get("val/acc"),
        "device": str(trainer.strategy.root_device),
        "precision": trainer.precision,
        "fingerprint": fp,
        "is_global_zero": trainer.is_global_zero,
    }
    log.info(
        "trained %d epochs in %.1f s on %s (%s): val/acc %.4f",
        summary["epochs"],
        fit_s,
        summary["device"],
        summary["precision"],
        summary["val_acc"] or float("nan"),
    )
    return lit.net.cpu().to(memory_format=torch.contiguous_format), summary


def flat_params(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"optimizer": {"lr": 1e-3}}` as `{"optimizer.lr": 1e-3}`: what loggers record."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _resumable_or_cleared(ckpt_dir: Path, fp: str) -> Path | None:
    """The checkpoint to resume from; else None, and the folder emptied for a fresh run."""
    resume_from = checkpoints.find_resumable(ckpt_dir, fp)
    if resume_from is None and ckpt_dir.exists():
        # ignore_errors: under DDP on one filesystem, every process clears the same folder.
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    return resume_from


def _checkpointing(fp: str, resumed_from_epoch: int | None, ckpt_dir: Path) -> list[Callback]:
    """The fingerprint in every checkpoint, and one file, `last.ckpt`, replaced at the end of
    every epoch (even ones without validation)."""
    return [
        checkpoints.Fingerprint(fp, resumed_from_epoch),
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename=LAST.removesuffix(".ckpt"),
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
            save_on_train_epoch_end=True,
            every_n_epochs=1,
        ),
    ]
