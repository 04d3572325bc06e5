"""Clocks for training runs: epoch boundaries and wall time that leaves out the benchmark's
own work (the test-accuracy checks), so that what is timed is only what training costs."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class Stopwatch:
    """Seconds since it was made, less the time spent inside `leave_out()`."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.left_out = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0 - self.left_out

    @contextmanager
    def leave_out(self) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.left_out += time.perf_counter() - t


@dataclass
class EpochLog:
    """Stopwatch readings at each epoch's start and end, and the test accuracy at each end."""

    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    done: float | None = None  # after the last epoch, checkpoint saving included

    def epoch_s(self) -> list[float]:
        """Each epoch's wall time, from its start to the next one's (validation, checkpoint
        and logging included)."""
        bounds = [*self.starts, self.done if self.done is not None else self.ends[-1]]
        return [b - a for a, b in itertools.pairwise(bounds)]

    def time_to(self, target: float) -> float | None:
        """Stopwatch time at the end of the first epoch whose test accuracy reached `target`."""
        hits = (t for t, a in zip(self.ends, self.test_acc, strict=True) if a >= target)
        return next(hits, None)


class EpochTimer(Callback):
    """Records an `EpochLog` of a Lightning fit; `evaluate(net)` (left out of the clock) gives
    the test accuracy at each epoch's end."""

    def __init__(
        self, watch: Stopwatch, evaluate: Callable[[torch.nn.Module], float] | None = None
    ) -> None:
        self.watch, self.evaluate = watch, evaluate
        self.record = EpochLog()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record.starts.append(self.watch.now())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning has validated by now; ModelCheckpoint, always the last callback, saves next.
        if self.evaluate is not None:
            with self.watch.leave_out():
                self.record.test_acc.append(self.evaluate(pl_module))
        self.record.ends.append(self.watch.now())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record.done = self.watch.now()


def summary(log: EpochLog, target: float, images_per_epoch: int) -> dict[str, Any]:
    """What every training variant reports about its clock."""
    epochs = log.epoch_s()
    # The first epoch pays for warm-up (allocator, oneDNN kernels, workers); later ones are the
    # steady state, and the number compared between variants.
    steady = epochs[1:] or epochs
    return {
        "epoch_s": [round(e, 4) for e in epochs],
        "steady_epoch_s": round(statistics.median(steady), 4),
        "train_s": round(log.done if log.done is not None else log.ends[-1], 4),
        "images_per_epoch": images_per_epoch,
        "test_acc": [round(a, 5) for a in log.test_acc],
        "final_test_acc": round(log.test_acc[-1], 5) if log.test_acc else None,
        "target_acc": target,
        "time_to_target_s": _round(log.time_to(target)),
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
