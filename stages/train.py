"""Train LeNet-5 with PyTorch Lightning, resuming a killed run from its last checkpoint.

Stage `train`: data/prepared -> models/lenet5.pt, dvclive/train (metrics and plots),
metrics/train.json (results), measurements/train.json (fit time), provenance/train.json;
checkpoints in --ckpt-dir (kept between runs, not cached by DVC).
Params: `train` section of params.yaml.

A run resumes from `<ckpt-dir>/last.ckpt` only when that checkpoint carries the same
fingerprint (train params, prepared data, training code, compute library versions);
otherwise it starts fresh and says why. For tests of that path, `MNIST_FAIL_AFTER_EPOCH=k`
kills the process (SIGKILL, as the OOM killer would) during epoch k+1 of a run that did not
itself resume.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, TQDMProgressBar

from mnist_pipeline import environment, provenance
from stages import cli, datamodule, dataset, model, module
from stages.dataset import load_normalization
from stages.io import write_json
from stages.model import LeNet5, save_model
from stages.module import LitLeNet5
from stages.params import TrainParams, load_params

log = logging.getLogger(__name__)

FAIL_ENV = "MNIST_FAIL_AFTER_EPOCH"
LAST = "last.ckpt"
METRICS_KEY = "callback_metrics"  # in each checkpoint: the metrics of the epoch it ends
# The code whose edits change what training produces; part of the resume fingerprint.
CODE_MODULES = (model, module, datamodule, dataset)
# Left out of the fingerprint: the progress bar changes nothing, and the thread count goes in
# as the number of threads it resolves to (0 means one per core, which varies by machine).
NOT_IN_FINGERPRINT = {"progress_bar", "num_threads"}


def fingerprint(params: TrainParams, data_dir: Path) -> str:
    """A hash of what determines the trained weights: params, prepared data, code, the
    installed versions of the libraries that compute them, and the CPU's kernels and thread
    count (each changes the last bits of every step, and so the weights)."""
    h = hashlib.sha256()
    h.update(json.dumps(params.model_dump(exclude=NOT_IN_FINGERPRINT), sort_keys=True).encode())
    h.update(json.dumps(environment.installed_versions(), sort_keys=True).encode())
    threads = params.num_threads or torch.get_num_threads()
    h.update(f"{torch.backends.cpu.get_cpu_capability()} threads={threads}".encode())
    # `precision: auto` means different arithmetic on different hardware: hash what it resolves to.
    h.update(resolve_precision(params.precision, params.accelerator).encode())
    for name in ("meta.json", "train.safetensors", "val.safetensors"):
        with (data_dir / name).open("rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    for mod in (*CODE_MODULES, sys.modules[__name__]):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()


def find_resumable(ckpt_dir: Path, fp: str) -> Path | None:
    """`last.ckpt` if it exists, loads and matches `fp`; otherwise None, with the reason logged."""
    last = ckpt_dir / LAST
    if not last.is_file():
        log.info("no checkpoint in %s: starting from scratch", ckpt_dir)
        return None
    try:
        saved = torch.load(last, map_location="cpu", weights_only=False).get("fingerprint")
    except Exception as err:  # a checkpoint cut short by a kill is not worth dying for
        log.warning("checkpoint %s is unreadable (%s): starting fresh", last, err)
        return None
    if saved != fp:
        log.warning(
            "checkpoint %s was made with other params, data or code (fingerprint %s, now %s): "
            "starting fresh",
            last,
            str(saved)[:12],
            fp[:12],
        )
        return None
    log.info("resuming from %s (fingerprint %s)", last, fp[:12])
    return last


def cpu_has_bf16() -> bool:
    """True on CPUs that compute bf16 natively (AVX512-BF16 or AMX): there bf16 autocast trains
    LeNet-5 1.6x faster at the same accuracy; elsewhere it would be emulated, and slower."""
    try:  # private helpers, so guarded: a torch without them gets 32-bit training
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16-mixed where the hardware computes bf16 natively (a GPU that supports it, a
    CPU with AVX512-BF16 or AMX), 32-true elsewhere."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (
        accelerator == "auto" and torch.cuda.is_available()
    )
    native = torch.cuda.is_bf16_supported() if on_gpu else cpu_has_bf16()
    return "bf16-mixed" if native else "32-true"


class Fingerprint(Callback):
    """Stores the fingerprint and the epoch's metrics in every checkpoint: a later run can tell
    whether it may resume, and one that resumes a finished run still has its results."""

    def __init__(self, fp: str) -> None:
        self.fp = fp

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["fingerprint"] = self.fp
        checkpoint[METRICS_KEY] = {k: float(v) for k, v in trainer.callback_metrics.items()}


class KillAfterEpoch(Callback):
    """Test hook: SIGKILL this process halfway through epoch `k` (0-based), once k are saved."""

    def __init__(self, epochs_done: int) -> None:
        self.k = epochs_done

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == self.k and batch_idx == trainer.num_training_batches // 2:
            log.error("%s=%d: killing the training process now", FAIL_ENV, self.k)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)


def make_logger(live_dir: Path, resume: bool) -> pl.loggers.Logger:
    """DVCLive when installed (it is a project dependency), else CSV, so GPU hosts without
    dvclive still train."""
    try:
        from dvclive.lightning import DVCLiveLogger
    except ImportError:
        log.warning("dvclive is not installed: logging to CSV in %s", live_dir)
        return pl.loggers.CSVLogger(live_dir, name="", version="")
    # dvcyaml=False: plots are declared in the project's dvc.yaml, which dvclive must not edit.
    return DVCLiveLogger(
        dir=str(live_dir), resume=resume, dvcyaml=False, save_dvc_exp=False, report=None
    )


def make_datamodule(params: TrainParams, data_dir: Path) -> datamodule.MNISTDataModule:
    return datamodule.MNISTDataModule(
        data_dir, params.batch_size, params.eval_batch_size, params.seed, params.channels_last
    )


def make_trainer(
    params: TrainParams,
    max_epochs: int,
    callbacks: list[Callback],
    logger: pl.loggers.Logger | bool,
    root_dir: Path,
) -> pl.Trainer:
    """The Trainer every fit in the project uses (training here, fine-tuning in `prune`)."""
    if params.num_threads:
        torch.set_num_threads(params.num_threads)
    show_bar = params.progress_bar and sys.stderr.isatty()
    if show_bar:
        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=20)]
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator=params.accelerator,
        devices=params.devices,
        strategy=params.strategy,
        precision=resolve_precision(params.precision, params.accelerator),
        logger=logger,
        callbacks=callbacks,
        check_val_every_n_epoch=params.val_every_n_epochs,
        num_sanity_val_steps=0,
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        default_root_dir=root_dir,
        log_every_n_steps=50,
    )


def train(
    params: TrainParams,
    data_dir: Path,
    ckpt_dir: Path,
    live_dir: Path,
    fail_after_epoch: int | None = None,
    extra_callbacks: Sequence[Callback] = (),
) -> tuple[LeNet5, dict[str, Any]]:
    """Fit (or resume fitting) and return the trained net with a summary of the run.

    `extra_callbacks` observe the fit without changing it (the benchmarks' clocks).
    """
    fp = fingerprint(params, data_dir)
    resume_from = find_resumable(ckpt_dir, fp)
    if resume_from is None and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    pl.seed_everything(params.seed, workers=True, verbose=False)
    lit = LitLeNet5(params.optimizer, params.scheduler)
    if params.channels_last:
        lit = lit.to(memory_format=torch.channels_last)
    if params.compile:
        lit.net.compile()  # in place: parameter names, checkpoints and saved models unchanged
    callbacks: list[Callback] = [
        Fingerprint(fp),
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
        callbacks.append(KillAfterEpoch(fail_after_epoch))
    callbacks.extend(extra_callbacks)
    trainer = make_trainer(
        params,
        params.max_epochs,
        callbacks,
        make_logger(live_dir, resume=resume_from is not None),
        ckpt_dir,
    )
    data = make_datamodule(params, data_dir)
    resumed_from_epoch = _epoch_of(resume_from)  # read now: fitting overwrites the file
    start = time.perf_counter()
    if params.tune_batch_size and resume_from is None:
        tune_batch_size(trainer, lit, data)
    trainer.fit(lit, datamodule=data, ckpt_path=resume_from)
    fit_s = time.perf_counter() - start
    # The final checkpoint's metrics, not the trainer's: a run that resumes a finished
    # checkpoint trains nothing, and must report what that checkpoint's run did.
    metrics = _saved(ckpt_dir / LAST, METRICS_KEY) or {}
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


def tune_batch_size(trainer: pl.Trainer, lit: LitLeNet5, data: datamodule.MNISTDataModule) -> int:
    """Double `data.batch_size` while a few training steps fit in memory (Lightning's tuner),
    never beyond the training split; returns the batch size it settles on."""
    from pytorch_lightning.tuner import Tuner

    start = data.batch_size
    n_train = dataset.split_sizes(data.data_dir)["train"]
    # Power-of-2 trials up to the largest batch that still leaves one full step per epoch.
    trials = max(1, (n_train // start).bit_length())
    found = Tuner(trainer).scale_batch_size(
        lit, datamodule=data, mode="power", init_val=start, max_trials=trials
    )
    data.batch_size = min(int(found or start), n_train)
    log.info("batch size tuned: %d -> %d", start, data.batch_size)
    return data.batch_size


def _epoch_of(ckpt: Path | None) -> int | None:
    if ckpt is None:
        return None
    return int(_saved(ckpt, "epoch")) + 1


def _saved(ckpt: Path, key: str) -> Any:
    """One entry of a checkpoint (None if the file or the entry is missing)."""
    if not ckpt.is_file():
        return None
    return torch.load(ckpt, map_location="cpu", weights_only=False).get(key)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--data", type=Path, required=True, help="prepared data folder")
    p.add_argument("--ckpt-dir", type=Path, required=True, help="checkpoints, kept for resuming")
    p.add_argument("--live-dir", type=Path, required=True, help="DVCLive metrics and plots")
    p.add_argument("--model", type=Path, required=True, help="trained model file to write")
    p.add_argument("--metrics", type=Path, required=True, help="results JSON to write")
    p.add_argument("--timings", type=Path, default=None, help="measurements JSON to write")
    p.add_argument("--provenance", type=Path, default=None, help="run record JSON to write")
    return p.parse_args(argv)


# Facts of this run rather than results of the training: kept out of the hashed outputs.
TIMINGS = ("fit_time_s",)
RUN_FACTS = ("resumed_from_epoch", "device", "precision", "fingerprint")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cli.setup_logging()
    params = load_params(args.params).train
    fail = os.environ.get(FAIL_ENV)
    with provenance.record(args.provenance, "train", [args.data], [params]) as run:
        net, summary = train(
            params,
            args.data,
            args.ckpt_dir,
            args.live_dir,
            fail_after_epoch=int(fail) if fail else None,
        )
        if not summary.pop("is_global_zero"):
            run.keep = False
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
    sys.exit(cli.run(main))
