"""The files `dvc metrics show` and `dvc plots show` read."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from stages import evaluate
from tests.stage_runs import stage_argv


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
