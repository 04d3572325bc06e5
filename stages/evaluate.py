"""Evaluate the trained model on the test set: accuracy, per-class metrics, confusion matrix.

Stage `evaluate`: models/lenet5.pt, data/prepared -> metrics/evaluate.json,
plots/evaluate/{per_class.json, confusion.json, confusion_matrix.png, misclassified.png},
provenance/evaluate.json.
Params: `evaluate` section of params.yaml.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mnist_pipeline import errors, stage
from mnist_pipeline.atomic import write_json
from mnist_pipeline.data.dataset import load_split
from mnist_pipeline.evaluation.metrics import evaluate, metrics_json
from mnist_pipeline.model import load_model, predict_logits
from mnist_pipeline.params.schema import EvaluateParams

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    paths = {
        "--model": "model file to evaluate",
        "--data": "prepared data folder",
        "--plots": "folder for plots to write",
    }
    return stage.parser("evaluate", __doc__, paths, metrics=True).parse_args(argv)


def evaluate_model(
    params: EvaluateParams, model_path: Path, data: Path, metrics_path: Path, plots: Path
) -> None:
    """Evaluate the model file on the test split and write the metrics and plots."""
    from mnist_pipeline.evaluation.plots import plot_confusion, plot_misclassified  # matplotlib

    net, _ = load_model(model_path)
    test = load_split(data, "test")
    ev = evaluate(predict_logits(net, test.images, params.batch_size), test.labels)
    plots.mkdir(parents=True, exist_ok=True)
    write_json(plots / "per_class.json", ev.per_class)
    write_json(
        plots / "confusion.json",
        [
            {"actual": int(a), "predicted": int(p)}
            for a, p in zip(test.labels.tolist(), ev.preds.tolist(), strict=True)
        ],
    )
    plot_confusion(ev.confusion, plots / "confusion_matrix.png")
    plot_misclassified(test, ev, params.n_misclassified, plots / "misclassified.png")
    write_json(metrics_path, metrics_json(ev))
    log.info("test accuracy %.4f, loss %.4f", ev.acc, ev.loss)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    inputs = [args.model, args.data / "test.safetensors"]
    with stage.running(args, "evaluate", inputs) as run:
        evaluate_model(run.params.evaluate, args.model, args.data, args.metrics, args.plots)


if __name__ == "__main__":
    sys.exit(errors.run(main))
