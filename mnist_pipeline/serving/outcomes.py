"""Where every classification comes out, whichever route asked for it (`POST /predict`, the
Open Inference Protocol's infer): the digits are counted, each prediction gets its feedback id,
and `observe` is the one place that sees the pixels and the probabilities together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mnist_pipeline.serving.drift import DriftWatch
from mnist_pipeline.serving.feedback import FeedbackStore
from mnist_pipeline.serving.metrics import ServerMetrics
from mnist_pipeline.serving.micro_batcher import Digits
from mnist_pipeline.serving.predict import Prediction
from mnist_pipeline.serving.served_model import ServedModel


@dataclass(frozen=True)
class Classified:
    pixels: list[np.ndarray]  # (28, 28) each, raw 0-255, as the model was given them
    predictions: list[Prediction]
    ids: list[str]  # feedback ids, one a prediction ("" each when feedback is off)
    run: int  # digits in the session run that classified them (micro-batching)


class Outcomes:
    def __init__(self, metrics: ServerMetrics, store: FeedbackStore, watch: DriftWatch) -> None:
        self.metrics, self.store, self.watch = metrics, store, watch

    async def classify(self, model: ServedModel, load: Callable[[], Digits]) -> Classified:
        """The digits `load` gives (it runs off the event loop), classified by `model`'s
        micro-batcher, then `observe`d."""
        loaded: list[Digits] = []

        def loading() -> Digits:
            loaded.append(load())
            return loaded[0]

        preds, run = await model.batcher.classify(loading)
        return self.observe(loaded[0][0], preds, run)

    def observe(self, pixels: list[np.ndarray], preds: list[Prediction], run: int) -> Classified:
        """Every classification's results, from every route, pass here once."""
        self.metrics.predicted(p.digit for p in preds)
        ids = self.store.add([p.digit for p in preds])
        self.metrics.live(self.store.accuracy())  # the window moved
        if pixels:  # the drift monitor: it only queues them here
            self.watch.observe(np.stack(pixels), np.array([p.probabilities for p in preds]))
        return Classified(pixels, preds, ids, run)
