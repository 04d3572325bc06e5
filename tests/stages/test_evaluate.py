"""Evaluation metrics and the files `dvc metrics show` and `dvc plots show` read."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from stages import evaluate
from tests.stage_runs import stage_argv


def test_metrics_from_known_logits() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 0, 1, 2, 2, 2])
    logits = torch.nn.functional.one_hot(preds, 10).float() * 10
    ev = evaluate.evaluate(logits, labels)
    assert abs(ev.acc - 5 / 6) < 1e-6
    assert ev.confusion[1, 2] == 1 and ev.confusion.trace() == 5
    by_class = {c["class"]: c for c in ev.per_class}
    assert by_class["1"]["recall"] == 0.5 and by_class["1"]["precision"] == 1.0
    assert abs(by_class["2"]["precision"] - 2 / 3) < 1e-4 and by_class["2"]["support"] == 2
    m = evaluate.metrics_json(ev)["test"]
    assert m["acc"] == round(5 / 6, 5) and m["errors"] == 1


def test_main_writes_metrics_and_plots(
    tmp_path: Path, params_file: Path, trained_model: Path, prepared: Path
) -> None:
    argv = stage_argv("evaluate", params_file, tmp_path, model=trained_model, data=prepared)
    evaluate.main(argv)
    plots = tmp_path / "plots/evaluate"
    metrics = json.loads((tmp_path / "metrics/evaluate.json").read_text())
    assert 0.9 <= metrics["test"]["acc"] <= 1.0
    assert len(json.loads((plots / "per_class.json").read_text())) == 10
    confusion = json.loads((plots / "confusion.json").read_text())
    assert len(confusion) == 200 and set(confusion[0]) == {"actual", "predicted"}
    for png in ("confusion_matrix.png", "misclassified.png"):
        with Image.open(plots / png) as img:
            assert img.format == "PNG" and img.width > 300
