"""Fingerprinted checkpoints: a killed or retried fit resumes only from its own kind of run.

Every checkpoint carries a fingerprint of what determines the weights (the params, the
prepared data, the training code, the compute libraries, the CPU's kernels and thread count)
and the metrics of the epoch it ends. A run resumes from `last.ckpt` only when the
fingerprints match; otherwise it starts fresh and says why. A run that resumes a finished
checkpoint trains nothing and reports that checkpoint's metrics.

Checkpoints are only ever unpickled with `weights_only=True` (tensors, containers and plain
values): the checkpoint folder may be shared storage, and a file planted there must not run
code in the process that reads it, before or after its fingerprint is checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import signal
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytorch_lightning as pl
import torch
from pydantic import BaseModel
from pytorch_lightning.callbacks import Callback

from mnist_pipeline import environment, errors, model
from mnist_pipeline.data import datamodule, dataset
from mnist_pipeline.training import lightning_module, trainer

log = logging.getLogger(__name__)

LAST = "last.ckpt"
METRICS_KEY = "callback_metrics"  # in each checkpoint: the metrics of the epoch it ends
FAIL_ENV = "MNIST_FAIL_AFTER_EPOCH"  # test hook: see `KillAfterEpoch`
# The shared code whose edits change what a fit produces (`train`'s, and `prune`'s
# fine-tuning): part of their resume fingerprints, with the stage's own module.
TRAINING_CODE: tuple[ModuleType, ...] = (model, lightning_module, datamodule, dataset, trainer)
# Left out of the fingerprint: the progress bar and the loggers change nothing.
NOT_IN_FINGERPRINT = {"progress_bar", "loggers"}


def fingerprint(
    params: BaseModel,
    precision: str,
    compute: dict[str, Any],
    files: Iterable[Path],
    code: Iterable[ModuleType],
    plugins: Iterable[dict[str, Any]] = (),
) -> str:
    """A hash of what determines the weights: `params` (all of them, but the fields above),
    the resolved `precision` (`auto` means other arithmetic on other hardware), the bytes of
    `files` (the data) and of the `code` modules' sources, the installed versions of the
    compute libraries, and how the process computes (`compute.apply`'s facts: profile, kernel
    levels, MKL branch and thread count, each of which changes the last bits of every step),
    and the distributions and versions of the `plugins` that change results."""
    h = hashlib.sha256()
    h.update(json.dumps(params.model_dump(exclude=NOT_IN_FINGERPRINT), sort_keys=True).encode())
    h.update(f"precision={precision}".encode())
    h.update(json.dumps(environment.installed_versions(), sort_keys=True).encode())
    h.update(json.dumps(compute, sort_keys=True).encode())
    h.update(json.dumps(list(plugins), sort_keys=True).encode())
    for path in files:
        with path.open("rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    for mod in code:
        h.update(Path(str(mod.__file__)).read_bytes())
    return h.hexdigest()


class Refused(Exception):
    """A checkpoint that is not only tensors and plain values: not unpickled."""


def load(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, unpickled with `weights_only=True`; `Refused` if it holds
    anything else (a cut-short file, or one whose pickle would run code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message goes on to suggest `weights_only=False`: keep only what was refused.
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?: Please use|\n|$)", str(err))
        what = (found.group(1) if found else str(err).splitlines()[0]).rstrip(". ")
        raise Refused(
            f"{path} is unreadable as tensors and plain values ({what}): cut short, or made to "
            "run code when unpickled; refused unread"
        ) from None


def saved(ckpt: Path, key: str) -> Any:
    """One entry of a checkpoint (None if the file or the entry is missing)."""
    if not ckpt.is_file():
        return None
    return load(ckpt).get(key)


def load_matching(path: Path, fp: str, what: str, fresh: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it exists, loads and carries the fingerprint `fp`; otherwise
    None, with the reason logged: "<what> <why>: <fresh>"."""
    if not path.is_file():
        log.info("no %s in %s: %s", what, path.parent, fresh)
        return None
    try:
        state = load(path)
    except Refused as err:
        log.warning("%s %s: %s", what, err, fresh)
        return None
    except Exception as err:  # a checkpoint cut short by a kill is not worth dying for
        log.warning("%s %s is unreadable (%s): %s", what, path, err, fresh)
        return None
    if state.get("fingerprint") != fp:
        log.warning(
            "%s %s was made with other params, data or code (fingerprint %s, now %s): %s",
            what,
            path,
            str(state.get("fingerprint"))[:12],
            fp[:12],
            fresh,
        )
        return None
    return state


def find_resumable(ckpt_dir: Path, fp: str) -> Path | None:
    """`last.ckpt` if it exists, loads and matches `fp`; otherwise None, with the reason logged."""
    last = ckpt_dir / LAST
    if not last.is_file():
        log.info("no checkpoint in %s: starting from scratch", ckpt_dir)
        return None
    if load_matching(last, fp, "checkpoint", "starting fresh") is None:
        return None
    log.info("resuming from %s (fingerprint %s)", last, fp[:12])
    return last


def epochs_done(ckpt: Path | None) -> int | None:
    """How many epochs a checkpoint has finished (None: no checkpoint)."""
    return None if ckpt is None else int(saved(ckpt, "epoch")) + 1


class Fingerprint(Callback):
    """Stores the fingerprint and the epoch's metrics in every checkpoint: a later run can tell
    whether it may resume, and one that resumes a finished run still has its results."""

    def __init__(self, fp: str, resumed_from_epoch: int | None = None) -> None:
        self.fp, self.resumed_from_epoch = fp, resumed_from_epoch

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Under DDP, check that every process starts the same run: a machine with other code,
        data or libraries, or without the checkpoint the others resume from, would otherwise
        train out of step with them (or wait for them forever)."""
        if trainer.world_size < 2:
            return
        mine = (self.fp, self.resumed_from_epoch)
        every: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(every, mine)
        if any(theirs != every[0] for theirs in every):
            lines = [
                f"  rank {rank}: fingerprint {fp[:12]}, "
                + ("from scratch" if epoch is None else f"resuming after epoch {epoch}")
                for rank, (fp, epoch) in enumerate(every)
            ]
            raise errors.StageError(
                "the DDP processes would not train the same run (same commit, data, installed "
                "libraries and CPU threads on every machine, and the checkpoint folder on a "
                "filesystem they all see):\n" + "\n".join(lines)
            )

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


def fail_after_epoch() -> int | None:
    """The epoch `MNIST_FAIL_AFTER_EPOCH` asks to be killed after (tests of resuming)."""
    value = os.environ.get(FAIL_ENV)
    return int(value) if value else None
