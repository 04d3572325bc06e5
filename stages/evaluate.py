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
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI or servers
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from mnist_pipeline import errors, stage
from mnist_pipeline.atomic import write_figure, write_json
from mnist_pipeline.dataset import Split, load_split
from mnist_pipeline.model import load_model, predict_logits
from mnist_pipeline.params import EvaluateParams

log = logging.getLogger(__name__)
NUM_CLASSES = 10


@dataclass(frozen=True)
class Evaluation:
    acc: float
    loss: float
    confusion: torch.Tensor  # (10, 10) rows: actual, columns: predicted
    per_class: list[dict]
    preds: torch.Tensor  # (N,)


def evaluate(logits: torch.Tensor, labels: torch.Tensor) -> Evaluation:
    """Metrics from test logits (N, 10) and labels (N,)."""
    preds = logits.argmax(dim=1)
    precision = multiclass_precision(preds, labels, NUM_CLASSES, average=None)
    recall = multiclass_recall(preds, labels, NUM_CLASSES, average=None)
    f1 = multiclass_f1_score(preds, labels, NUM_CLASSES, average=None)
    support = torch.bincount(labels, minlength=NUM_CLASSES)
    per_class = [
        {
            "class": str(c),
            "precision": round(float(precision[c]), 5),
            "recall": round(float(recall[c]), 5),
            "f1": round(float(f1[c]), 5),
            "support": int(support[c]),
        }
        for c in range(NUM_CLASSES)
    ]
    return Evaluation(
        acc=float((preds == labels).float().mean()),
        loss=float(F.cross_entropy(logits, labels)),
        confusion=multiclass_confusion_matrix(preds, labels, num_classes=NUM_CLASSES),
        per_class=per_class,
        preds=preds,
    )


def metrics_json(ev: Evaluation) -> dict:
    f1s = [c["f1"] for c in ev.per_class]
    return {
        "test": {
            "acc": round(ev.acc, 5),
            "loss": round(ev.loss, 5),
            "macro_f1": round(sum(f1s) / len(f1s), 5),
            "errors": int((ev.confusion.sum() - ev.confusion.trace()).item()),
        }
    }


def plot_confusion(confusion: torch.Tensor, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    # Log colour scale: the diagonal (~1000) would otherwise wash out the errors (~1-10).
    im = ax.imshow(confusion.clamp(min=1).log10().numpy(), cmap="Blues")
    for (i, j), v in zip(
        torch.cartesian_prod(torch.arange(10), torch.arange(10)).tolist(),
        confusion.flatten().tolist(),
        strict=True,
    ):
        if v:
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if i == j else "black",
            )
    ax.set(
        xticks=range(10),
        yticks=range(10),
        xlabel="predicted",
        ylabel="actual",
        title=f"Test confusion matrix ({int(confusion.sum())} digits)",
    )
    fig.colorbar(im, ax=ax, label="log10(count)")
    write_figure(path, fig, dpi=110)


def plot_misclassified(test: Split, ev: Evaluation, n: int, path: Path) -> None:
    wrong = (ev.preds != test.labels).nonzero().flatten()[:n].tolist()
    cols = 10
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        ax.imshow(test.images[i, 0].numpy(), cmap="gray")
        ax.set_title(f"{int(test.labels[i])}→{int(ev.preds[i])}", fontsize=8, color="crimson")
    fig.suptitle(
        f"Misclassified test digits (true→predicted), {len(wrong)} of "
        f"{int((ev.preds != test.labels).sum())}",
        fontsize=10,
    )
    write_figure(path, fig, dpi=100)


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
