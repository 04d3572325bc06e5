"""The project's params shrunk to run in seconds on the synthetic digits (testing.synthetic):
the tests' params, and those of `python -m benchmarks --compare --quick`."""

from __future__ import annotations

from typing import Any


def shrink(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` (a params.yaml as loaded) with the tiny recipe: sections changed in place."""
    raw["prepare"].update(val_size=100, mirror=None)
    raw["train"].update(
        max_epochs=2,
        batch_size=32,
        eval_batch_size=256,
        progress_bar=False,
        accelerator="cpu",
        devices=1,
        precision="32-true",
    )
    raw["train"]["optimizer"]["lr"] = 8.0e-3  # for batches of 32 (the default suits 512)
    raw["evaluate"].update(batch_size=256, n_misclassified=10)
    raw["prune"].update(rounds=1)
    raw["prune"]["finetune"].update(epochs=1)
    # Timing is not what the tests check: few runs, and no failing on a loaded machine.
    raw["export"].update(
        batch_size=64, warmup_runs=2, latency_runs=10, throughput_runs=3, max_slowdown=10.0
    )
    raw["quantize"].update(
        calibration_size=50, batch_size=64, warmup_runs=2, latency_runs=10, throughput_runs=3
    )
    raw["profile"].update(quantiles=200, calibration_window=100, calibration_windows=200)
    return raw
