"""The run report from plain data."""

from __future__ import annotations

from pathlib import Path

from pipelines.report import (
    StageRun,
    markdown_table,
    metrics_rows,
    model_files,
    per_class_rows,
    summary_markdown,
)


def test_metrics_rows_show_change_since_previous_run_and_head() -> None:
    now = {"metrics/evaluate.json": {"test.acc": 0.99, "test.errors": 90, "note": "x"}}
    before = {"metrics/evaluate.json": {"test.acc": 0.98, "test.errors": 100}}
    head = {"metrics/evaluate.json": {"test.acc": {"old": 0.97, "new": 0.99, "diff": 0.02}}}
    rows = {r["metric"]: r for r in metrics_rows(now, before, head)}
    assert set(rows) == {"test.acc", "test.errors"}  # numbers only
    assert rows["test.acc"]["Δ previous run"] == "+0.01"
    assert rows["test.acc"]["Δ HEAD"] == "+0.02"
    assert rows["test.errors"]["Δ previous run"] == "-10"
    assert rows["test.errors"]["Δ HEAD"] == "0"
    assert metrics_rows(now, {}, {})[0]["Δ previous run"] == "new"


def test_per_class_accuracy_is_recall() -> None:
    per_class = [{"class": "3", "precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10}]
    assert per_class_rows(per_class) == [
        {"class": "3", "accuracy": 0.8, "precision": 0.9, "f1": 0.85, "support": 10}
    ]


def test_summary_names_what_ran_and_where_the_models_are(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models/lenet5.onnx").write_bytes(b"x" * 2048)
    models = model_files(tmp_path, [tmp_path / "models/lenet5.onnx", tmp_path / "metrics"])
    assert models == [{"file": "models/lenet5.onnx", "format": "ONNX", "kB": 2.0}]
    md = summary_markdown(
        run_name="nightly",
        stages=[StageRun("prepare", "skipped", 1, 0.0), StageRun("train", "ran", 2, 30.0)],
        metric_rows=[],
        models=models,
        remote="/srv/remote",
        pushed="pushed 3 outputs",
        registered="lenet5@v1.2.0",
        overrides={"train.max_epochs": (4, 3)},
    )
    assert "Ran `train`" in md and "| train | ran | 2 | 30 |" in md
    assert "models/lenet5.onnx" in md and "/srv/remote" in md and "lenet5@v1.2.0" in md
    assert "| train.max_epochs | 4 | 3 |" in md


def test_markdown_table() -> None:
    assert markdown_table([{"a": 1, "b": 0.5}]) == "| a | b |\n|---|---|\n| 1 | 0.5 |\n"
    assert markdown_table([]) == "_none_\n"
