"""What `mnist-serve` tells its operator: Prometheus metrics at `/metrics`, and access logs.

Metrics, from prometheus-client (the text format at `GET /metrics`):

    http_requests_total{handler, status}       requests answered, status by class ("2xx")
    http_request_duration_seconds{handler}     latency, a histogram
    mnist_predictions_total{digit}             digits classified, by the digit predicted
    mnist_batch_size                           digits per session run (the micro-batcher's)
    mnist_model_info{name, version, sha256}    1 for the model in service (0 once swapped out)
    mnist_model_reloads_total                  models swapped in by a reload
    mnist_model_reload_failures_total          new models refused (the old one kept serving)
    mnist_ready                                1 when `/readyz` would answer 200, else 0
    mnist_feedback_labels_total                true labels posted for predictions (feedback.py)
    mnist_feedback_correct_total               of them, those the model had predicted
    mnist_live_accuracy                        correct / labelled over the feedback window
    mnist_drift_score{signal}                  the window's drift statistic, per signal
    mnist_drift_threshold{signal}              its threshold at the window's size
    mnist_drift_alarm{signal}                  1: enough digits and score > threshold
    mnist_drift_window_samples                 digits in the window
    mnist_window_confidence_mean               the window's mean max-softmax
    mnist_reference_confidence_mean            the profile's, for the model served

With `--workers N` prometheus-client runs in multiprocess mode: each worker writes its figures
to files in `PROMETHEUS_MULTIPROC_DIR`, and whichever worker answers a scrape sums them all.
Each worker keeps its own drift window; the drift gauges are the maximum over the workers
(`multiprocess_mode="max"`): an alarm in any worker's window is an alarm, and no `pid` label
multiplies the series.

`--log-format json` writes one JSON line per request instead of uvicorn's access log: method,
path, status, latency, the batch size of the run that served it, and the model's sha256.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnist_pipeline.drift.monitor import Report

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
OTHER = "other"  # the handler label of a path the app has no route for: bounded cardinality
ACCESS_LOGGER = "mnist_pipeline.access"


def multiprocess() -> bool:
    """Whether this process writes its metrics for a multiprocess scrape (`--workers N`)."""
    return bool(os.environ.get(MULTIPROC_ENV))


class ServerMetrics:
    """The server's metrics: in a registry of their own, or in multiprocess files."""

    def __init__(self) -> None:
        # Multiprocess metrics go to files, not to a registry; a scrape reads all the files.
        self.registry = None if multiprocess() else CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "http_requests", "Requests answered", ["handler", "status"], registry=reg
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from a request's start to its answer's last byte",
            ["handler"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.predictions = Counter(
            "mnist_predictions",
            "Digits classified, by the digit predicted",
            ["digit"],
            registry=reg,
        )
        self.batch_size = Histogram(
            "mnist_batch_size", "Digits per session run", buckets=BATCH_BUCKETS, registry=reg
        )
        self.model_info = Gauge(
            "mnist_model_info",
            "The model in service (1) and those swapped out (0)",
            ["name", "version", "sha256"],
            multiprocess_mode="mostrecent",
            registry=reg,
        )
        self.reloads, self.reload_failures, self.feedback_labels, self.feedback_correct = (
            Counter(name, doc, registry=reg)
            for name, doc in (
                ("mnist_model_reloads", "Models swapped in by a reload"),
                (
                    "mnist_model_reload_failures",
                    "New models refused by a reload; the old one kept serving",
                ),
                ("mnist_feedback_labels", "True labels posted for predictions"),
                ("mnist_feedback_correct", "True labels posted that match the digit predicted"),
            )
        )
        self.live_accuracy = Gauge(
            "mnist_live_accuracy",
            "Correct / labelled over the labelled predictions of the feedback window (NaN: none)",
            multiprocess_mode="mostrecent",
            registry=reg,
        )
        # Set by each scrape from what `/readyz` says (not from SIGTERM's handler, which must
        # not take the metric's lock); across workers, that of the worker that answered last.
        self.ready = Gauge(
            "mnist_ready",
            "1 when a model is loaded and no SIGTERM came (/readyz 200), else 0",
            multiprocess_mode="mostrecent",
            registry=reg,
        )
        self.live_accuracy.set(math.nan)
        self._drift_gauges()

    def labelled(self, labels: int, correct: int, accuracy: float | None) -> None:
        self.feedback_labels.inc(labels)
        self.feedback_correct.inc(correct)
        self.live(accuracy)

    def live(self, accuracy: float | None) -> None:
        self.live_accuracy.set(math.nan if accuracy is None else accuracy)

    def _drift_gauges(self) -> None:
        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            # The worst of the workers' windows: an alarm in any of them is an alarm.
            return Gauge(name, doc, labels, multiprocess_mode="max", registry=self.registry)

        self.drift_score = gauge("mnist_drift_score", "Drift statistic of the window", "signal")
        self.drift_threshold = gauge(
            "mnist_drift_threshold", "The statistic's threshold at the window's size", "signal"
        )
        self.drift_alarm = gauge(
            "mnist_drift_alarm", "1: window big enough, score over threshold", "signal"
        )
        self.drift_samples = gauge("mnist_drift_window_samples", "Digits in the drift window")
        self.window_confidence = gauge(
            "mnist_window_confidence_mean", "Mean max-softmax of the window's predictions"
        )
        self.reference_confidence = gauge(
            "mnist_reference_confidence_mean", "Mean max-softmax in the reference profile"
        )

    def drift(self, report: Report) -> None:
        """The gauges of a drift report."""
        for name, s in report.signals.items():
            if s.score is not None and s.threshold is not None:
                self.drift_score.labels(signal=name).set(s.score)
                self.drift_threshold.labels(signal=name).set(s.threshold)
            self.drift_alarm.labels(signal=name).set(int(s.alarm))
        self.drift_samples.set(report.samples)
        if report.confidence_mean is not None:
            self.window_confidence.set(report.confidence_mean)
        if report.reference_confidence_mean is not None:
            self.reference_confidence.set(report.reference_confidence_mean)

    def served(self, name: str, version: str | None, sha256: str, up: bool) -> None:
        self.model_info.labels(name=name, version=version or "", sha256=sha256).set(int(up))

    def predicted(self, digits: Iterable[int]) -> None:
        for digit in digits:
            self.predictions.labels(digit=str(digit)).inc()

    def render(self, ready: bool) -> tuple[bytes, str]:
        """The scrape, with `ready` as this process sees it now: the text format, and its
        content type."""
        self.ready.set(int(ready))
        if self.registry is not None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def json_access_log() -> logging.Logger:
    """The access logger, writing bare JSON lines to stderr."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class Observe:
    """ASGI middleware, outermost: counts and times every request (refusals by the limits
    too) and writes its access-log line. The handler tells it, through `request.state`, the
    batch size and model that served a prediction."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServerMetrics,
        handlers: set[str],
        access_log: logging.Logger | None,
    ) -> None:
        self.app, self.metrics, self.handlers, self.access_log = app, metrics, handlers, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering
        state = scope.setdefault("state", {})

        async def watched_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            seconds = time.perf_counter() - start
            path = scope["path"]
            route = getattr(scope.get("route"), "path", None)  # a template: /v2/models/{name}
            handler = path if path in self.handlers else route if route in self.handlers else OTHER
            self.metrics.requests.labels(handler=handler, status=f"{status // 100}xx").inc()
            self.metrics.latency.labels(handler=handler).observe(seconds)
            if self.access_log is not None:
                line = {
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "latency_ms": round(seconds * 1000, 3),
                    "batch_size": state.get("batch_size"),
                    "model_sha256": state.get("model_sha256"),
                }
                self.access_log.info(json.dumps(line))
