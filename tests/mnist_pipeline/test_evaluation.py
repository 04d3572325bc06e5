"""Evaluation metrics from known logits."""

from __future__ import annotations

import torch

from mnist_pipeline.evaluation import metrics


def test_metrics_from_known_logits() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 0, 1, 2, 2, 2])
    logits = torch.nn.functional.one_hot(preds, 10).float() * 10
    ev = metrics.evaluate(logits, labels)
    assert abs(ev.acc - 5 / 6) < 1e-6
    assert ev.confusion[1, 2] == 1 and ev.confusion.trace() == 5
    by_class = {c["class"]: c for c in ev.per_class}
    assert by_class["1"]["recall"] == 0.5 and by_class["1"]["precision"] == 1.0
    assert abs(by_class["2"]["precision"] - 2 / 3) < 1e-4 and by_class["2"]["support"] == 2
    m = metrics.metrics_json(ev)["test"]
    assert m["acc"] == round(5 / 6, 5) and m["errors"] == 1


def test_scores_are_torchmetrics_bit_for_bit() -> None:
    """The written-out formulas give torchmetrics' tensors exactly, a class never predicted
    (0 by zero division) and one never present included."""
    from torchmetrics.functional.classification import (
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 9, (5000,), generator=g)  # class 9 never present
    preds = torch.where(torch.rand(5000, generator=g) < 0.9, labels, torch.randint(0, 10, (5000,)))
    preds[preds == 3] = 4  # class 3 never predicted
    confusion = metrics.confusion_matrix(preds, labels)
    assert torch.equal(confusion, multiclass_confusion_matrix(preds, labels, 10))
    ours = metrics.class_scores(confusion)
    theirs = [f(preds, labels, 10, average=None) for f in (
        multiclass_precision, multiclass_recall, multiclass_f1_score
    )]  # fmt: skip
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine.dtype == ref.dtype and torch.equal(mine, ref)
