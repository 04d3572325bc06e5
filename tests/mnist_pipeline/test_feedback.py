"""Feedback: prediction ids from both APIs, true labels posted for them, the refusals (unknown,
expired, twice, not a digit), and the live accuracy on `/metrics` over the store's window."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mnist_pipeline.serving import server
from mnist_pipeline.serving.feedback import FeedbackStore


def _client(model: Path, capacity: int) -> TestClient:
    c = TestClient(server.create_app(model, feedback_capacity=capacity))
    c.__enter__()
    for _ in range(200):
        if c.get("/readyz").status_code == 200:
            break
        time.sleep(0.05)
    return c


@pytest.fixture
def client(onnx_model: Path) -> Iterator[TestClient]:
    c = _client(onnx_model, 6)
    yield c
    c.__exit__(None, None, None)


def _metrics(c: TestClient) -> dict[str, float]:
    text = c.get("/metrics").text
    return {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith(("mnist_feedback", "mnist_live"))
    }


def test_the_store_forgets_the_oldest_and_its_window_accuracy_follows() -> None:
    store = FeedbackStore(capacity=3)
    a, b = store.add([1, 2])
    assert len(a) == 32 and a != b and store.accuracy() is None
    assert store.problem(a, 1) is None and store.label(a, 1) and not store.label(b, 7)
    assert store.accuracy() == 0.5
    assert store.problem(a, 1) == (409, f"prediction {a} is labelled already")
    assert store.problem("nope", 1)[0] == 404  # type: ignore[index]
    for bad in (10, -1, 1.0, True, "3", None):
        assert store.problem(b, bad)[0] == 400  # type: ignore[index]
    store.add([5])  # a, b and one more: full
    store.add([5])  # a is forgotten, with its correct label
    assert store.problem(a, 1)[0] == 404 and store.accuracy() == 0.0  # type: ignore[index]
    store.add([5, 5])  # b too
    assert store.accuracy() is None and len(store.entries) == 3
    assert FeedbackStore(capacity=0).add([1, 2]) == ["", ""]


def test_labels_for_both_apis_move_the_counters_and_the_live_accuracy(
    client: TestClient, onnx_model: Path, digits: list[np.ndarray]
) -> None:
    assert math.isnan(_metrics(client)["mnist_live_accuracy"])
    preds = client.post("/predict", json={"pixels": [d.tolist() for d in digits[:2]]}).json()
    batch = np.stack(digits[2:4])[:, None]
    v2 = client.post(
        f"/v2/models/{onnx_model.name}/infer",
        json={
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "UINT8",
                    "shape": [2, 1, 28, 28],
                    "data": batch.ravel().tolist(),
                }
            ]
        },
    ).json()
    v2_ids = v2["parameters"]["prediction_ids"].split(",")
    v2_digits = next(o["data"] for o in v2["outputs"] if o["name"] == "digit")
    right = {"id": preds[0]["id"], "label": preds[0]["digit"]}
    wrong = {"id": preds[1]["id"], "label": (preds[1]["digit"] + 1) % 10}
    answer = client.post("/feedback", json=[right, wrong])
    assert answer.json() == {"labelled": 2, "correct": 1, "live_accuracy": 0.5}
    assert client.post("/feedback", json={"id": v2_ids[0], "label": v2_digits[0]}).is_success
    m = _metrics(client)
    assert m["mnist_feedback_labels_total"] == 3 and m["mnist_feedback_correct_total"] == 2
    assert m["mnist_live_accuracy"] == pytest.approx(2 / 3)
    # All or nothing: v2_ids[1] is not labelled by a request whose other item is refused.
    again = client.post("/feedback", json=[{"id": v2_ids[1], "label": 3}, right])
    assert again.status_code == 409 and "labelled already" in again.json()["error"]
    assert client.post("/feedback", json={"id": v2_ids[1], "label": 3}).is_success
    # Capacity 6: four more predictions push the first two out of the window.
    client.post("/predict", json={"pixels": [d.tolist() for d in digits]})
    gone = client.post("/feedback", json={"id": preds[0]["id"], "label": 1})
    assert gone.status_code == 404
    m = _metrics(client)
    assert m["mnist_feedback_labels_total"] == 4  # cumulative
    assert m["mnist_live_accuracy"] == pytest.approx(1 / 2 if v2_digits[1] != 3 else 1.0)


def _with_id(body: object, id_: str) -> object:
    """`body` with each "ID" replaced by `id_`, a prediction's id."""
    if isinstance(body, list):
        return [_with_id(item, id_) for item in body]
    if isinstance(body, dict):
        return {k: _with_id(v, id_) for k, v in body.items()}
    return id_ if body == "ID" else body


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"id": "unknown", "label": 1}, 404, "no prediction"),
        ({"id": "ID", "label": 10}, 400, "digit 0-9"),
        ({"id": "ID", "label": "7"}, 400, "digit 0-9"),
        ({"id": "ID"}, 400, "expected"),
        ({"id": "ID", "label": 1, "extra": 0}, 400, "expected"),
        ([], 400, "expected"),
        ([{"id": "ID", "label": 1}, {"id": "ID", "label": 1}], 400, "each id once"),
        ("text", 400, "expected"),
    ],
)
def test_bad_feedback_is_refused_and_records_nothing(
    client: TestClient, digits: list[np.ndarray], body: object, status: int, message: str
) -> None:
    (pred,) = client.post("/predict", json={"pixels": digits[0].tolist()}).json()
    bad = client.post("/feedback", json=_with_id(body, pred["id"]))
    assert bad.status_code == status, bad.text
    assert message in bad.json()["error"]
    assert _metrics(client)["mnist_feedback_labels_total"] == 0
    assert client.post("/feedback", json={"id": pred["id"], "label": 1}).is_success


def test_feedback_is_off_with_several_workers(onnx_model: Path) -> None:
    assert server.parse_args(["--model", "m"]).feedback_capacity == 10_000
    assert server.parse_args(["--model", "m", "--workers", "2"]).feedback_capacity == 0
    for bad in (["--workers", "2", "--feedback-capacity", "5"], ["--feedback-capacity", "-1"]):
        with pytest.raises(SystemExit):
            server.parse_args(["--model", "m", *bad])
    c = _client(onnx_model, 0)
    try:
        (pred,) = c.post("/predict", json={"pixels": [[0] * 28] * 28}).json()
        assert pred["id"] == ""
        off = c.post("/feedback", json={"id": "", "label": 1})
        assert off.status_code == 501 and "--workers" in off.json()["error"]
    finally:
        c.__exit__(None, None, None)
