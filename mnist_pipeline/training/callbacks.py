"""The built-in callback plugins, registered in pyproject.toml's `mnist_pipeline.callbacks`
entry points and chosen in `train.callbacks`.

The checkpointing that makes `train` resumable (the fingerprint in every checkpoint, and
`last.ckpt` after every epoch) is not among them: a run without it could not resume, so the fit
always adds it, before the callbacks params.yaml names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from mnist_pipeline.plugins import Args, Plugin

if TYPE_CHECKING:
    import pytorch_lightning as pl


class LearningRateArgs(Args):
    logging_interval: Literal["step", "epoch"] | None = "epoch"
    """When to log the learning rate (null: as the schedule steps)."""


def _lr_monitor(args: LearningRateArgs, context: None) -> pl.Callback:
    from pytorch_lightning.callbacks import LearningRateMonitor

    return LearningRateMonitor(logging_interval=args.logging_interval)


LR_MONITOR = Plugin(
    _lr_monitor,
    LearningRateArgs,
    summary="Lightning's LearningRateMonitor: the learning rate to every logger",
    changes_results=False,
)
