"""Three plugins, one of each kind: a wider LeNet-5, early stopping, and a CSV logger.

Only pydantic and the plugin API are imported at the top: params.yaml is checked (names and
arguments) by importing this module, before any work, and that should stay quick. Lightning is
imported when a plugin is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from mnist_pipeline.model import LeNet5, Widths
from mnist_pipeline.plugins import Args, LoggerContext, Plugin

if TYPE_CHECKING:
    import pytorch_lightning as pl


class WideArgs(Args):
    factor: int = Field(default=2, ge=1, le=8)
    """Every layer's width times this (conv1 6 -> 12 at 2)."""


def _wide_lenet5(args: WideArgs, context: None) -> LeNet5:
    # A LeNet5 of other widths: prune, export, quantize and serving take it as they are.
    f = args.factor
    return LeNet5(Widths(conv1=6 * f, conv2=16 * f, fc1=120 * f, fc2=84 * f))


class EarlyStoppingArgs(Args):
    monitor: str = "val/loss"
    """The logged metric to watch."""
    patience: int = Field(default=2, ge=1)
    """Validations without improvement before the fit stops."""
    min_delta: float = Field(default=0.0, ge=0)
    """The least change that counts as an improvement."""
    mode: Literal["min", "max"] = "min"
    """min: lower is better (a loss); max: higher is better (an accuracy)."""


def _early_stopping(args: EarlyStoppingArgs, context: None) -> pl.Callback:
    from pytorch_lightning.callbacks import EarlyStopping

    return EarlyStopping(
        monitor=args.monitor, patience=args.patience, min_delta=args.min_delta, mode=args.mode
    )


class CsvArgs(Args):
    dir: str | None = None
    """Where the `metrics.csv` and `hparams.yaml` of each run go (null: `csv` beside the
    stage's DVCLive folder, as the built-in loggers do: `dvclive/csv` under `dvc repro`)."""


def _csv(args: CsvArgs, context: LoggerContext) -> pl.loggers.Logger:
    from pytorch_lightning.loggers import CSVLogger

    save_dir = args.dir if args.dir is not None else context.live_dir.parent / "csv"
    logger = CSVLogger(save_dir=save_dir, name=context.run_name)
    logger.log_hyperparams(context.params)
    return logger


WIDE_LENET5 = Plugin(_wide_lenet5, WideArgs, summary="LeNet-5 with every layer wider")
EARLY_STOPPING = Plugin(_early_stopping, EarlyStoppingArgs, summary="Lightning's EarlyStopping")
CSV = Plugin(_csv, CsvArgs, summary="Lightning's CSVLogger", changes_results=False)
