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
