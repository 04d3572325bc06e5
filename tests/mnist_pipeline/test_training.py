"""The Trainer's precision choice."""

from __future__ import annotations

import pytest

from mnist_pipeline.training import trainer


def test_precision_auto_follows_native_bf16_under_the_fast_profile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: False)
    assert trainer.resolve_precision("auto", "cpu", "fast") == "32-true"
    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: True)
    assert trainer.resolve_precision("auto", "cpu", "fast") == "bf16-mixed"
    assert trainer.resolve_precision("32-true", "cpu", "fast") == "32-true"
    # The portable profile trains in 32 bits whatever the CPU computes natively.
    assert trainer.resolve_precision("auto", "cpu", "portable") == "32-true"
