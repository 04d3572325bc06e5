"""Test metrics from logits: accuracy, loss, per-class precision, recall and F1, the confusion
matrix, and the numbers `metrics/evaluate.json` holds."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

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
