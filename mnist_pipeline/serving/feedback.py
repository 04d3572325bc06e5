"""Feedback: the true label of a prediction, posted after it, and the live accuracy it gives.

Every digit classified (by `POST /predict` or the Open Inference Protocol) gets an id, and
`FeedbackStore` keeps the last `--feedback-capacity` ids with the digit predicted for each,
forgetting the oldest first. `POST /feedback` with `{"id": ..., "label": 0-9}`, or a list of
them, records labels: 404 for an id the store does not hold (unknown, or too old), 409 for an id
labelled already, 400 for a label that is not a digit. The live accuracy is over the labelled
predictions the store holds now (a sliding window of the last `--feedback-capacity`
predictions), so it follows the model as traffic changes; the counters are cumulative.

The store is in the process's memory. With `--workers N` a feedback request may reach a worker
that did not make the prediction, so feedback is refused there (`--feedback-capacity` 0: ids are
still given, `POST /feedback` answers 501); run one worker per process behind the balancer
instead.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from mnist_pipeline.serving.inputs import BadInput
from mnist_pipeline.serving.metrics import ServerMetrics

DEFAULT_CAPACITY = 10_000
MAX_LABELS = 1024  # per `POST /feedback` request


class FeedbackOut(BaseModel):
    labelled: int  # the labels this request recorded
    correct: int  # of them, those the model predicted
    live_accuracy: float | None  # correct / labelled over the store's window; None: no labels


@dataclass
class FeedbackStore:
    """The last `capacity` prediction ids -> [digit predicted, true label or None]."""

    capacity: int
    entries: OrderedDict[str, list[int | None]] = field(default_factory=OrderedDict)
    labelled: int = 0  # labelled entries held now
    correct: int = 0  # of them, predicted right

    def add(self, digits: list[int]) -> list[str]:
        """New ids for these predictions (empty strings with capacity 0: no feedback)."""
        if self.capacity <= 0:
            return ["" for _ in digits]
        ids = [uuid.uuid4().hex for _ in digits]
        for i, digit in zip(ids, digits, strict=True):
            self.entries[i] = [digit, None]
        while len(self.entries) > self.capacity:
            _, (predicted, label) = self.entries.popitem(last=False)
            if label is not None:
                self.labelled -= 1
                self.correct -= int(label == predicted)
        return ids

    def problem(self, id_: str, label: Any) -> tuple[int, str] | None:
        """Why `label` cannot be recorded for `id_` (status, message); None when it can."""
        if type(label) is not int or not 0 <= label <= 9:  # bool is an int subclass
            return 400, f"label must be an integer digit 0-9, not {label!r}"[:200]
        entry = self.entries.get(id_) if isinstance(id_, str) else None
        if entry is None:
            return (
                404,
                f"no prediction {id_!r:.80} (unknown, or older than the last {self.capacity})",
            )
        if entry[1] is not None:
            return 409, f"prediction {id_} is labelled already"
        return None

    def label(self, id_: str, label: int) -> bool:
        """Record a label `problem` found no fault with; whether the prediction was right."""
        entry = self.entries[id_]
        entry[1] = label
        self.labelled += 1
        right = label == entry[0]
        self.correct += int(right)
        return right

    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


def router(store: FeedbackStore, metrics: ServerMetrics) -> APIRouter:
    router = APIRouter()
    codes = (400, 404, 409, 413, 422, 501)
    refusals: dict[int | str, dict[str, Any]] = {c: {"description": "refused"} for c in codes}

    @router.post("/feedback", responses=refusals)
    async def feedback(request: Request) -> FeedbackOut:
        """The true label of earlier predictions: `{"id", "label"}` or a list of them. All
        or nothing: a request with one bad item records none."""
        if store.capacity <= 0:
            raise BadInput(501, "feedback is off: --feedback-capacity 0 (or --workers > 1)")
        try:
            body = await request.json()
        except (ValueError, RecursionError):
            raise BadInput(400, "the body is not valid JSON") from None
        items = body if isinstance(body, list) else [body]
        if len(items) > MAX_LABELS:
            raise BadInput(413, f"{len(items)} labels in one request; at most {MAX_LABELS}")
        ids = [item.get("id") if isinstance(item, dict) else None for item in items]
        if not items or len(set(map(str, ids))) < len(ids):
            raise BadInput(400, 'expected {"id": ..., "label": 0-9} or a list, each id once')
        for i, item in enumerate(items):
            if not isinstance(item, dict) or set(item) != {"id", "label"}:
                raise BadInput(400, f'item {i}: expected {{"id": ..., "label": 0-9}}')
            found = store.problem(item["id"], item["label"])
            if found:
                raise BadInput(found[0], f"item {i}: {found[1]}")
        correct = sum(store.label(item["id"], item["label"]) for item in items)
        metrics.labelled(len(items), correct, store.accuracy())
        return FeedbackOut(labelled=len(items), correct=correct, live_accuracy=store.accuracy())

    return router
