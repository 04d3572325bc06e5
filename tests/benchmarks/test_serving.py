"""The serving load test runs end to end against a real `mnist-serve` process: every cell has
its figures, and the target's verdict is computed from them, not written in."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from benchmarks import report, serving


def test_load_test_measures_each_setting_and_concurrency(
    onnx_model: Path, digits: list[np.ndarray], tmp_path: Path, synthetic_profile: Path
) -> None:
    shutil.copy(onnx_model, tmp_path / "pruned_int8.onnx")
    shutil.copy(synthetic_profile, tmp_path / "drift_profile.json")  # monitoring on, by default
    got = serving.measure(
        tmp_path,
        digits[0],
        requests=30,
        models={"pruned-int8": "pruned_int8.onnx"},
        concurrency=(1, 8),
        scrape_reps=1,
    )
    cells = got["runs"]["pruned-int8"]
    assert set(cells) == set(serving.SETTINGS)
    for by_c in cells.values():
        assert set(by_c) == {"1", "8"}
        for r in by_c.values():
            assert r["rps"] > 0 and math.isfinite(r["rps"]) and 0 < r["p50_ms"] <= r["p99_ms"]
    best = max((c["8"] for c in cells.values()), key=lambda r: r["rps"])
    assert got["target_best"] == best
    assert got["target_met"] == (best["rps"] >= 1000 and best["p99_ms"] <= 20)
    for setting in serving.SCRAPE_SETTINGS:  # scraping's cost, measured beside the cell
        cell = got["scraping"][setting]
        assert cell["rps_off"] > 0 and cell["cost"] == round(
            1 - cell["rps_on"] / cell["rps_off"], 4
        )
    mon = got["monitoring"]  # drift monitoring on against off, side by side at the cell
    assert mon["monitoring_enabled"] and min(mon["rps_on"], mon["rps_off"]) > 0
    assert mon["cost"] == round(1 - mon["rps_on"] / mon["rps_off"], 4)
    assert mon["bound_met"] == (mon["cost"] <= 0.05)
    table = report.markdown({"machine": _machine(), "command": "x", "serving": got})
    assert "| pruned-int8 | micro-batching |" in table and "target: pruned-int8" in table
    assert "scraping /metrics every 1 s" in table


def test_missing_models_are_skipped_with_the_reason(tmp_path: Path) -> None:
    got = serving.measure(tmp_path, np.zeros((28, 28), np.uint8))
    assert "run dvc repro" in got["skipped"]


def _machine() -> dict:
    keys = ("cpu", "cpu_cores", "memory_gb", "gpu", "torch", "lightning", "load_avg_1m_at_start")
    return dict.fromkeys(keys, "-")
