"""Test metrics from logits: accuracy, loss, per-class precision, recall and F1, the confusion
matrix, and the numbers `metrics/evaluate.json` holds.

The per-class scores are torchmetrics' formulas (`multiclass_precision`, `_recall`,
`_f1_score` with `average=None`, 0 where a class has no predictions) on the counts of the
confusion matrix, written out here: any `import torchmetrics...` runs its package's
`__init__`, which imports every domain it has (image with torchvision, audio and the plots
with matplotlib), seconds the evaluate stage spent on nothing it uses. A test keeps them equal
to torchmetrics bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NUM_CLASSES = 10


@dataclass(frozen=True)
class Evaluation:
    acc: float
    loss: float
    confusion: torch.Tensor  # (10, 10) rows: actual, columns: predicted
    per_class: list[dict]
    preds: torch.Tensor  # (N,)


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(10, 10) int64 counts, rows: actual, columns: predicted."""
    cells = labels.long() * NUM_CLASSES + preds.long()
    return torch.bincount(cells, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def _safe_divide(num: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """num / denom in float32, 0 where denom is 0 (torchmetrics' `_safe_divide`)."""
    num, denom = num.float(), denom.float()
    return torch.where(denom != 0, num / denom, torch.tensor(0.0))


def class_scores(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class precision, recall and F1 (10,) float32 from the confusion matrix."""
    tp = confusion.diag()
    fp = confusion.sum(dim=0) - tp
    fn = confusion.sum(dim=1) - tp
    f1 = _safe_divide(2 * tp, 2 * tp + fn + fp)
    return _safe_divide(tp, tp + fp), _safe_divide(tp, tp + fn), f1


def evaluate(logits: torch.Tensor, labels: torch.Tensor) -> Evaluation:
    """Metrics from test logits (N, 10) and labels (N,)."""
    preds = logits.argmax(dim=1)
    confusion = confusion_matrix(preds, labels)
    precision, recall, f1 = class_scores(confusion)
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
        confusion=confusion,
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
