"""Drift monitoring in `mnist-serve`: the monitor of the model in service, its gauges, and what
`GET /monitoring/drift` and `GET /model` say of it.

The reference profile is `--drift-profile`, else `drift_profile.json` beside the model file
(the `profile` stage writes it beside the ONNX models in `models/`; a model bundle may hold
one). A model swap starts a fresh window, tested against the new model's entry. Without a
profile, or with `--no-drift`, nothing is monitored and the endpoint says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from mnist_pipeline.drift import monitor, profile
from mnist_pipeline.serving import bundle
from mnist_pipeline.serving.metrics import ServerMetrics
from mnist_pipeline.serving.model_ref import ModelSource
from mnist_pipeline.serving.served_model import ProfileRef

log = logging.getLogger(__name__)
PROFILE_NAME = bundle.PROFILE  # beside the model file, as dvc repro and a bundle leave it


@dataclass(frozen=True)
class DriftOptions:
    """`--drift-profile`, `--drift-window`, `--no-drift`."""

    profile: Path | None = None
    window: int = monitor.DEFAULT_WINDOW
    enabled: bool = True


class SignalOut(BaseModel):
    score: float | None
    threshold: float | None
    alarm: bool


class DriftOut(BaseModel):
    """What `GET /monitoring/drift` answers: this process's window and its tests."""

    enabled: bool
    reason: str | None = Field(description="Why nothing is monitored, when nothing is")
    profile: ProfileRef | None
    samples: int = Field(description="Digits in the window")
    window: int = Field(description="Digits the window holds at most")
    min_samples: int = Field(description="Digits a window needs before it may alarm")
    confidence_mean: float | None
    reference_confidence_mean: float | None
    signals: dict[str, SignalOut]


def find_profile(options: DriftOptions, source: ModelSource) -> Path | None:
    if options.profile is not None:
        return options.profile
    beside = source.path.parent / PROFILE_NAME
    return beside if beside.is_file() else None


class DriftWatch:
    """The drift monitor of the model in service, or why there is none."""

    def __init__(self, options: DriftOptions, metrics: ServerMetrics) -> None:
        self.options, self.metrics = options, metrics
        self.monitor: monitor.DriftMonitor | None = None
        self.ref: ProfileRef | None = None
        self.reason: str | None = "no model is loaded yet" if options.enabled else "--no-drift"

    def swap(self, source: ModelSource, sha256: str) -> None:
        """A fresh window for the model now served."""
        if not self.options.enabled:
            return
        path = find_profile(self.options, source)
        if path is None:
            self.monitor, self.ref = None, None
            self.reason = f"no {PROFILE_NAME} beside {source.path} and no --drift-profile"
            log.warning("drift: %s", self.reason)
            return
        try:
            prof = profile.load(path)
        except (OSError, ValueError, KeyError) as err:
            self.monitor, self.ref, self.reason = None, None, f"profile {path}: {err}"
            log.error("drift: %s", self.reason)
            return
        self.monitor = monitor.DriftMonitor(
            prof, sha256, window=self.options.window, on_report=self.metrics.drift
        )
        self.ref = ProfileRef(file=path.name, sha256=prof.sha256, model=self.monitor.model)
        self.reason = None
        if self.monitor.model is None:
            log.warning("drift: %s has no entry for this model: inputs only", path)

    def observe(self, pixels: np.ndarray, probabilities: np.ndarray) -> None:
        """The hook every classifying route calls: raw digits (N, 28, 28) uint8 and their
        softmax (N, 10)."""
        if self.monitor is not None:
            self.monitor.observe(pixels, probabilities)

    def report(self) -> DriftOut:
        if self.monitor is None:
            return DriftOut(
                enabled=False,
                reason=self.reason,
                profile=None,
                samples=0,
                window=self.options.window,
                min_samples=0,
                confidence_mean=None,
                reference_confidence_mean=None,
                signals={},
            )
        rep = self.monitor.report()
        return DriftOut(
            enabled=True,
            reason=None,
            profile=self.ref,
            samples=rep.samples,
            window=rep.window,
            min_samples=rep.min_samples,
            confidence_mean=rep.confidence_mean,
            reference_confidence_mean=rep.reference_confidence_mean,
            signals={
                name: SignalOut(score=s.score, threshold=s.threshold, alarm=s.alarm)
                for name, s in rep.signals.items()
            },
        )
