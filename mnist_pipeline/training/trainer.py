"""The Trainer every fit in the project uses (`train`, and `prune`'s fine-tuning), and how it
chooses its precision."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, TQDMProgressBar
from pytorch_lightning.plugins.environments import SLURMEnvironment

from mnist_pipeline.compute import PORTABLE
from mnist_pipeline.data.datamodule import MNISTDataModule
from mnist_pipeline.params.schema import ComputeParams, TrainParams


def cpu_has_bf16() -> bool:
    """True on CPUs that compute bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 autocast
    would be emulated, and slower than fp32."""
    try:  # private helpers, so guarded: a torch without them gets 32-bit training
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def resolve_precision(precision: str, accelerator: str, profile: str) -> str:
    """`auto`: 32-true under the portable profile; under the fast one, bf16-mixed where the
    hardware computes bf16 natively (a GPU that supports it, a CPU with AVX512-BF16 or AMX),
    32-true elsewhere."""
    if precision != "auto":
        return precision
    if profile == PORTABLE:
        return "32-true"
    on_gpu = accelerator in ("gpu", "cuda") or (
        accelerator == "auto" and torch.cuda.is_available()
    )
    native = torch.cuda.is_bf16_supported() if on_gpu else cpu_has_bf16()
    return "bf16-mixed" if native else "32-true"


def make_logger(live_dir: Path, resume: bool) -> pl.loggers.Logger:
    """DVCLive, writing into `live_dir`; a resumed run continues the curves."""
    from dvclive.lightning import DVCLiveLogger

    # dvcyaml=False: plots are declared in the project's dvc.yaml, which dvclive must not edit.
    return DVCLiveLogger(
        dir=str(live_dir), resume=resume, dvcyaml=False, save_dvc_exp=False, report=None
    )


def make_datamodule(params: TrainParams, data_dir: Path) -> MNISTDataModule:
    return MNISTDataModule(
        data_dir, params.batch_size, params.eval_batch_size, params.seed, params.channels_last
    )


def make_trainer(
    params: TrainParams,
    compute: ComputeParams,
    max_epochs: int,
    callbacks: list[Callback],
    logger: pl.loggers.Logger | list[pl.loggers.Logger] | bool,
    root_dir: Path,
) -> pl.Trainer:
    """A Trainer set up from the `train` params, for `max_epochs`; the thread count is
    `compute.apply`'s."""
    show_bar = params.progress_bar and sys.stderr.isatty()
    if show_bar:
        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=20)]
    # Under SLURM (detected by Lightning), no auto-requeue: its mid-epoch `hpc_ckpt_*.ckpt`
    # would be resumed without the fingerprint check; `sbatch --requeue` and `last.ckpt` do it.
    plugins: list[Any] | None = (
        [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    )
    return pl.Trainer(
        max_epochs=max_epochs,
        plugins=plugins,
        accelerator=params.accelerator,
        devices=params.devices,
        num_nodes=params.num_nodes,
        strategy=params.strategy,
        precision=cast(
            Any, resolve_precision(params.precision, params.accelerator, compute.profile)
        ),
        # Portable: deterministic algorithms (on a GPU, cuDNN's and cuBLAS's; Lightning sets
        # CUBLAS_WORKSPACE_CONFIG), so a run repeats bit for bit on the same GPU model.
        deterministic=compute.profile == PORTABLE,
        logger=logger,
        callbacks=callbacks,
        check_val_every_n_epoch=params.val_every_n_epochs,
        num_sanity_val_steps=0,
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        default_root_dir=root_dir,
        log_every_n_steps=50,
    )


def tune_batch_size(trainer: pl.Trainer, lit: pl.LightningModule, data: MNISTDataModule) -> int:
    """Double `data.batch_size` while a few training steps fit in memory (Lightning's tuner),
    never beyond the training split; returns the batch size it settles on."""
    from pytorch_lightning.tuner import Tuner

    from mnist_pipeline.data.dataset import split_sizes

    start = data.batch_size
    n_train = split_sizes(data.data_dir)["train"]
    # Power-of-2 trials up to the largest batch that still leaves one full step per epoch.
    trials = max(1, (n_train // start).bit_length())
    found = Tuner(trainer).scale_batch_size(
        lit, datamodule=data, mode="power", init_val=start, max_trials=trials
    )
    data.batch_size = min(int(found or start), n_train)
    return data.batch_size
