"""The built-in logger plugins: DVCLive (the default, whose files DVC tracks), TensorBoard and
MLflow. Each is a `mnist_pipeline.plugins.Plugin` registered in pyproject.toml's
`mnist_pipeline.loggers` entry points and chosen in `train.loggers`.

Loggers observe: none of them changes a weight, a metric or a byte of what DVC hashes, so they
are left out of the resume fingerprint. Lightning is imported when a logger is built, not when
params.yaml is checked.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_pipeline.plugins import Args, LoggerContext, NoArgs, Plugin

if TYPE_CHECKING:
    import pytorch_lightning as pl


def _dvclive(args: NoArgs, context: LoggerContext) -> pl.loggers.Logger:
    from mnist_pipeline.training.trainer import make_logger

    return make_logger(context.live_dir, resume=context.resume)


def beside_live_dir(context: LoggerContext, name: str) -> Path:
    """`<name>` beside the stage's DVCLive folder (`dvclive/<name>` for dvc.yaml's
    `dvclive/train`): a logger's default folder follows the paths dvc.yaml gives the stage, and
    names none of its own."""
    return context.live_dir.parent / name


class TensorBoardArgs(Args):
    dir: str | None = None
    """The folder `tensorboard --logdir` reads; each run writes `<dir>/<name>/version_<n>/`.
    null: `tensorboard` beside the stage's DVCLive folder (`dvclive/tensorboard`). A relative
    path is relative to the folder the stage runs in (the repository root under `dvc repro`)."""
    name: str = "train"
    """The experiment's subfolder."""


def _tensorboard(args: TensorBoardArgs, context: LoggerContext) -> pl.loggers.Logger:
    from pytorch_lightning.loggers import TensorBoardLogger

    save_dir = args.dir if args.dir is not None else beside_live_dir(context, "tensorboard")
    logger = TensorBoardLogger(save_dir=save_dir, name=args.name, default_hp_metric=False)
    logger.log_hyperparams(context.params)
    return logger


class MLflowArgs(Args):
    tracking_uri: str | None = None
    """A local file store (`file:<folder>`) or a tracking server (`http://host:5000`).
    null: a file store in `mlruns` beside the stage's DVCLive folder (`dvclive/mlruns`)."""
    experiment: str = "mnist-pipeline"
    """The MLflow experiment the runs go into."""
    run_name: str | None = None
    """The run's name (null: the stage's name)."""
    log_model: bool = True
    """Log the trained network as an MLflow PyTorch model with its input/output signature."""


def _mlflow(args: MLflowArgs, context: LoggerContext) -> pl.loggers.Logger:
    from pytorch_lightning.loggers import MLFlowLogger

    uri = args.tracking_uri
    if uri is None:
        store = beside_live_dir(context, "mlruns")
        store.mkdir(parents=True, exist_ok=True)
        uri = store.resolve().as_uri()
    if uri.startswith("file:"):
        # MLflow 3 refuses a file store unless asked for; choosing the mlflow logger is asking.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = MLFlowLogger(
        experiment_name=args.experiment,
        run_name=args.run_name or context.run_name,
        tracking_uri=uri,
    )
    logger.log_hyperparams(context.params)
    if args.log_model:
        context.callbacks.append(_log_model_callback(logger))
    return logger


def _log_model_callback(logger: Any) -> pl.Callback:
    """A callback that logs the fitted network to `logger`'s MLflow run, with its signature,
    from a copy on the CPU (the trained net itself is left as it is)."""
    import pytorch_lightning as pl
    import torch

    class LogModel(pl.Callback):
        def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if not trainer.is_global_zero:
                return
            import mlflow
            import mlflow.pytorch

            net = copy.deepcopy(getattr(pl_module, "net", pl_module)).cpu().float().eval()
            net = net.to(memory_format=torch.contiguous_format)
            mlflow.set_tracking_uri(logger._tracking_uri)
            with mlflow.start_run(run_id=logger.run_id):
                mlflow.pytorch.log_model(
                    net,
                    name="model",
                    signature=model_signature(),
                    # pickle: MLflow 3's default (pt2) wants signatures it cannot infer here.
                    serialization_format="pickle",
                    # Named, not inferred: inferring runs a subprocess that loads the model.
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                )

    return LogModel()


def model_signature() -> Any:
    """Every model plugin's contract, as an MLflow signature: normalized float32 images
    `(-1, 1, 28, 28)` in, float32 logits `(-1, 10)` out, `-1` the batch of any size. Named, not
    inferred from an example, so the batch axis is variable and the shapes are exact."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    f32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, 1, 28, 28))]),
        outputs=Schema([TensorSpec(f32, (-1, 10))]),
    )


DVCLIVE = Plugin(
    _dvclive, summary="DVCLive: the metrics and plots DVC tracks", changes_results=False
)
TENSORBOARD = Plugin(
    _tensorboard,
    TensorBoardArgs,
    summary="TensorBoard event files (`tensorboard --logdir`)",
    changes_results=False,
)
MLFLOW = Plugin(
    _mlflow,
    MLflowArgs,
    summary="MLflow: params, metrics and the model, to a file store or a server",
    changes_results=False,
)
