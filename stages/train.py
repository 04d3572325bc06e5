"""Train LeNet-5 with PyTorch Lightning, resuming a killed run from its last checkpoint.

Stage `train`: data/prepared -> models/lenet5.pt, dvclive/train (metrics and plots),
metrics/train.json (results), measurements/train.json (fit time), provenance/train.json;
checkpoints in --ckpt-dir (kept between runs, not cached by DVC).
Params: `train` section of params.yaml.

A run resumes from `<ckpt-dir>/last.ckpt` only when that checkpoint carries the same
fingerprint (see `mnist_pipeline.checkpoints`); otherwise it starts fresh and says why. For
tests of that path, `MNIST_FAIL_AFTER_EPOCH=k` kills the process (SIGKILL, as the OOM killer
would) during epoch k+1 of a run that did not itself resume.
"""

from __future__ import annotations

import argparse
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

from mnist_pipeline import checkpoints, errors, stage, training
from mnist_pipeline import compute as compute_mod
from mnist_pipeline.atomic import write_json
from mnist_pipeline.checkpoints import LAST, METRICS_KEY
from mnist_pipeline.dataset import load_normalization
from mnist_pipeline.lightning_module import LitLeNet5
from mnist_pipeline.model import LeNet5, save_model
from mnist_pipeline.params import ComputeParams, TrainParams

log = logging.getLogger(__name__)


def fingerprint(params: TrainParams, compute: ComputeParams, data_dir: Path) -> str:
    """The resume fingerprint of a `train` run: params, data, training code, environment and
    how the process computes (`mnist_pipeline.compute.apply`'s facts)."""
    computed = compute_mod.apply(compute)
    files = [data_dir / name for name in ("meta.json", "train.safetensors", "val.safetensors")]
    code = (*checkpoints.TRAINING_CODE, sys.modules[__name__])
    precision = training.resolve_precision(params.precision, params.accelerator, compute.profile)
    return checkpoints.fingerprint(params, precision, computed, files, code)


def train(
    params: TrainParams,
    compute: ComputeParams,
    data_dir: Path,
    ckpt_dir: Path,
    live_dir: Path,
    fail_after_epoch: int | None = None,
    extra_callbacks: Sequence[Callback] = (),
) -> tuple[LeNet5, dict[str, Any]]:
    """Fit (or resume fitting) and return the trained net with a summary of the run.

    `extra_callbacks` observe the fit without changing it (the benchmarks' clocks).
    """
    fp = fingerprint(params, compute, data_dir)
    resume_from = checkpoints.find_resumable(ckpt_dir, fp)
    if resume_from is None and ckpt_dir.exists():
        # ignore_errors: under DDP on one filesystem, every process clears the same folder.
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    resumed_from_epoch = checkpoints.epochs_done(resume_from)  # read now: fit overwrites it
    pl.seed_everything(params.seed, workers=True, verbose=False)
    lit = LitLeNet5(params.optimizer, params.scheduler)
    if params.channels_last:
        lit = lit.to(memory_format=torch.channels_last)
    if params.compile:
        lit.net.compile()  # in place: parameter names, checkpoints and saved models unchanged
    callbacks: list[Callback] = [
        checkpoints.Fingerprint(fp, resumed_from_epoch),
        # One file, `last.ckpt`, replaced at the end of every epoch (even ones without validation).
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
    if fail_after_epoch is not None and resume_from is None:
        callbacks.append(checkpoints.KillAfterEpoch(fail_after_epoch))
    callbacks.extend(extra_callbacks)
    trainer = training.make_trainer(
        params,
        compute,
        params.max_epochs,
        callbacks,
        training.make_logger(live_dir, resume=resume_from is not None),
        ckpt_dir,
    )
    data = training.make_datamodule(params, data_dir)
    start = time.perf_counter()
    if params.tune_batch_size and resume_from is None:
        start_batch = data.batch_size
        training.tune_batch_size(trainer, lit, data)
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    paths = {
        "--data": "prepared data folder",
        "--ckpt-dir": "checkpoints, kept for resuming",
        "--live-dir": "DVCLive metrics and plots",
        "--model": "trained model file to write",
    }
    return stage.parser("train", __doc__, paths, metrics=True, timings=True).parse_args(argv)


# Facts of this run rather than results of the training: kept out of the hashed outputs.
TIMINGS = ("fit_time_s",)
RUN_FACTS = ("resumed_from_epoch", "device", "precision", "fingerprint")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with stage.running(args, "train", [args.data]) as run:
        net, summary = train(
            run.params.train,
            run.params.compute,
            args.data,
            args.ckpt_dir,
            args.live_dir,
            fail_after_epoch=checkpoints.fail_after_epoch(),
        )
        if not summary.pop("is_global_zero"):
            run.record.keep = False
            return
        run.facts.update({k: summary.pop(k) for k in RUN_FACTS})
        timings = {k: summary.pop(k) for k in TIMINGS}
        norm = load_normalization(args.data)
        # Only what determines the weights' meaning; where and when they were made is in the
        # provenance record.
        meta = {"mean": norm.mean, "std": norm.std, "precision": run.facts["precision"]}
        save_model(net, args.model, meta=meta)
        # Numbers only: `dvc metrics show` and `dvc exp show` tabulate these files.
        write_json(args.metrics, {k: v for k, v in summary.items() if v is not None})
        if args.timings is not None:
            write_json(args.timings, timings)


if __name__ == "__main__":
    sys.exit(errors.run(main))
