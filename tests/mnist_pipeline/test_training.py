"""The Trainer's precision choice."""

from __future__ import annotations

import pytest

from mnist_pipeline import training


def test_precision_auto_follows_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
    assert training.resolve_precision("auto", "cpu") == "32-true"
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: True)
    assert training.resolve_precision("auto", "cpu") == "bf16-mixed"
    assert training.resolve_precision("32-true", "cpu") == "32-true"
