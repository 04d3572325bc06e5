"""The live drift monitor: sliding windows of the recent digits' features and predictions,
tested against the reference profile.

`observe(pixels, probabilities)` is the one hook a route calls with each batch it classified:
it only queues the digits. Every `every` digits, and when a report is asked for (`report()`:
`GET /monitoring/drift`), the queued digits' features are extracted in one vectorized pass
into ring buffers of `window` rows (memory is fixed), and the window is tested. With
`--workers N` each process keeps its own window of the digits it served.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mnist_pipeline.drift import features
from mnist_pipeline.drift.profile import Profile, Signal, monitor_confidence

DEFAULT_WINDOW, DEFAULT_EVERY, DEFAULT_MIN_SAMPLES = 500, 50, 100


@dataclass(frozen=True)
class SignalScore:
    score: float | None  # None before the window holds any digit
    threshold: float | None
    alarm: bool


@dataclass(frozen=True)
class Report:
    """The window's drift: a score, a threshold and an alarm per signal."""

    samples: int
    window: int
    min_samples: int
    signals: dict[str, SignalScore]
    confidence_mean: float | None  # of the window
    reference_confidence_mean: float | None
    model: str | None  # the profile's name of the served model, None when it has none


class DriftMonitor:
    """Windows of the last `window` digits of one served model, and their drift scores.

    `model_sha256` picks the model's reference predictions from the profile; without an entry
    only the input features are tested. `on_report` sees each report made (the gauges)."""

    def __init__(
        self,
        profile: Profile,
        model_sha256: str | None,
        window: int = DEFAULT_WINDOW,
        every: int = DEFAULT_EVERY,
        min_samples: int = DEFAULT_MIN_SAMPLES,
        on_report: Callable[[Report], None] = lambda report: None,
    ) -> None:
        if window < 1 or every < 1 or min_samples < 1:
            raise ValueError("the window, the report interval and min_samples must be >= 1")
        self.profile, self.window, self.every, self.on_report = profile, window, every, on_report
        self.min_samples = min(min_samples, window)
        self.model, self.prediction_signals, self.reference_confidence = profile.for_model(
            model_sha256
        )
        self._features = np.zeros((window, len(features.FEATURES)))  # (window, F)
        self._confidence = np.zeros(window)
        self._classes = np.zeros(window, dtype=np.int64)
        self._next, self._count, self._since = 0, 0, 0
        self._queued: list[tuple[np.ndarray, np.ndarray]] = []  # (pixels, probabilities)
        self._lock = threading.Lock()  # the queue; held for an append
        self._window_lock = threading.Lock()  # the ring buffers; one flush at a time

    def observe(self, pixels: np.ndarray, probabilities: np.ndarray) -> None:
        """Add classified digits: raw pixels (N, 28, 28) and their softmax (N, 10)."""
        with self._lock:
            self._queued.append((pixels, probabilities))
            self._since += len(pixels)
            due = self._since >= self.every
            if due:
                self._since = 0
        if due:
            self.report()

    def _flush(self) -> None:
        """The queued digits into the window, in one pass (the caller holds _window_lock)."""
        with self._lock:
            queued, self._queued = self._queued, []
        if not queued:
            return
        pixels = np.concatenate([np.asarray(p).reshape(-1, 28, 28) for p, _ in queued])
        probs = np.concatenate(
            [np.asarray(q, dtype=np.float64).reshape(-1, 10) for _, q in queued]
        )
        n = min(len(pixels), self.window)  # more than the window: its last digits
        rows = (self._next + np.arange(n)) % self.window
        self._features[rows] = features.extract(pixels[-n:])  # (n, F)
        self._confidence[rows] = monitor_confidence(probs[-n:])
        self._classes[rows] = probs[-n:].argmax(axis=1)
        self._next = int((self._next + n) % self.window)
        self._count = min(self._count + n, self.window)

    def _values(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self._window_lock:
            self._flush()
            n = self._count
            return self._features[:n].copy(), self._confidence[:n].copy(), self._classes[:n].copy()

    def report(self) -> Report:
        """Test the window now, and give the report to `on_report` too."""
        feats, conf, classes = self._values()
        n = len(conf)
        columns: dict[str, tuple[Signal, np.ndarray]] = {
            name: (self.profile.signals[name], feats[:, i])
            for i, name in enumerate(features.FEATURES)
        }
        if self.prediction_signals:
            columns["confidence"] = (self.prediction_signals["confidence"], conf)
            columns["predicted_class"] = (self.prediction_signals["predicted_class"], classes)
        scores = {}
        for name, (signal, values) in columns.items():
            if n == 0:
                scores[name] = SignalScore(None, None, False)
                continue
            score, threshold = signal.score(values), signal.threshold(n)
            scores[name] = SignalScore(
                score, threshold, n >= self.min_samples and score > threshold
            )
        report = Report(
            samples=n,
            window=self.window,
            min_samples=self.min_samples,
            signals=scores,
            confidence_mean=float(conf.mean()) if n else None,
            reference_confidence_mean=self.reference_confidence,
            model=self.model,
        )
        self.on_report(report)
        return report
