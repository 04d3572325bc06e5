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
from typing import TYPE_CHECKING, Any

from mnist_pipeline.plugins import Args, LoggerContext, NoArgs, Plugin

if TYPE_CHECKING:
    import pytorch_lightning as pl


def _dvclive(args: NoArgs, context: LoggerContext) -> pl.loggers.Logger:
    from mnist_pipeline.training.trainer import make_logger

    return make_logger(context.live_dir, resume=context.resume)


class TensorBoardArgs(Args):
    dir: str = "tensorboard"
    """The folder `tensorboard --logdir` reads; each run writes `<dir>/<name>/version_<n>/`."""
    name: str = "train"
    """The experiment's subfolder."""


def _tensorboard(args: TensorBoardArgs, context: LoggerContext) -> pl.loggers.Logger:
    from pytorch_lightning.loggers import TensorBoardLogger

    logger = TensorBoardLogger(save_dir=args.dir, name=args.name, default_hp_metric=False)
    logger.log_hyperparams(context.params)
    return logger


class MLflowArgs(Args):
    tracking_uri: str = "file:./mlruns"
    """A local file store (`file:<folder>`) or a tracking server (`http://host:5000`)."""
    experiment: str = "mnist-pipeline"
    """The MLflow experiment the runs go into."""
    run_name: str | None = None
    """The run's name (null: the stage's name)."""
    log_model: bool = True
    """Log the trained network as an MLflow PyTorch model with its input/output signature."""


def _mlflow(args: MLflowArgs, context: LoggerContext) -> pl.loggers.Logger:
    from pytorch_lightning.loggers import MLFlowLogger

    if args.tracking_uri.startswith("file:"):
        # MLflow 3 refuses a file store unless asked for; naming one in params is asking.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = MLFlowLogger(
        experiment_name=args.experiment,
        run_name=args.run_name or context.run_name,
        tracking_uri=args.tracking_uri,
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
            from mlflow.models import infer_signature

            net = copy.deepcopy(getattr(pl_module, "net", pl_module)).cpu().float().eval()
            net = net.to(memory_format=torch.contiguous_format)
            example = torch.zeros(1, 1, 28, 28)  # normalized images (N, 1, 28, 28)
            with torch.no_grad():
                logits = net(example)  # (N, 10)
            signature = infer_signature(example.numpy(), logits.numpy())
            mlflow.set_tracking_uri(logger._tracking_uri)
            with mlflow.start_run(run_id=logger.run_id):
                mlflow.pytorch.log_model(
                    net,
                    name="model",
                    signature=signature,
                    # pickle: MLflow 3's default (pt2) wants signatures it cannot infer here.
                    serialization_format="pickle",
                    # Named, not inferred: inferring runs a subprocess that loads the model.
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                )

    return LogModel()


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
