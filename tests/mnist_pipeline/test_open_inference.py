"""The Open Inference Protocol (KServe v2 REST) of `mnist-serve`: metadata, probes, infer with
JSON and binary tensors and the same answers as `/predict`, every bad tensor a 4xx; then a real
client, `tritonclient.http`, against a real server, and on real digits (slow)."""

from __future__ import annotations

import json
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.serving import Served, start_server
from mnist_pipeline.onnx import runtime
from mnist_pipeline.serving import predict, server
from tests.conftest import ROOT, RealDigits


@pytest.fixture(scope="module")
def client(onnx_model: Path) -> Iterator[TestClient]:
    app = server.create_app(onnx_model, server.Limits(max_files=8))
    with TestClient(app) as c:
        for _ in range(200):
            if c.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.05)
        yield c


def _tensor(digits: np.ndarray, datatype: str = "UINT8", nested: bool = False) -> dict:
    data = digits.tolist() if nested else digits.ravel().tolist()
    return {"name": "pixels", "datatype": datatype, "shape": list(digits.shape), "data": data}


def _offline(model: Path, digits: np.ndarray) -> np.ndarray:
    """The probabilities `mnist-predict` gives, (N, 10)."""
    preds = predict.classify(runtime.session(model), list(digits[:, 0]), ["x"] * len(digits))
    return np.array([p.probabilities for p in preds])


def test_server_and_model_metadata_and_probes(client: TestClient, onnx_model: Path) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "mnist-serve" and "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    model = client.get(f"/v2/models/{onnx_model.name}").json()
    sha = client.get("/model").json()["sha256"]
    assert model["versions"] == [sha[:12]] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert {o["name"]: o["shape"] for o in model["outputs"]} == {
        "probabilities": [-1, 10],
        "digit": [-1],
    }
    assert client.get(f"/v2/models/{onnx_model.name}/versions/{sha[:12]}").json() == model
    assert client.get(f"/v2/models/{onnx_model.name}/ready").status_code == 200
    unknown = client.get("/v2/models/other/ready")
    assert unknown.status_code == 404 and set(unknown.json()) == {"error"}
    assert client.get(f"/v2/models/{onnx_model.name}/versions/0").status_code == 404


def test_json_infer_gives_the_answers_of_predict(
    client: TestClient, onnx_model: Path, digits: list[np.ndarray]
) -> None:
    batch = np.stack(digits)[:, None]  # (4, 1, 28, 28) uint8
    want = _offline(onnx_model, batch)
    url = f"/v2/models/{onnx_model.name}/infer"
    for tensor in (_tensor(batch), _tensor(batch, nested=True), _tensor(batch, "FP32")):
        got = client.post(url, json={"id": "r1", "inputs": [tensor]})
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["id"] == "r1" and body["model_name"] == onnx_model.name
        out = {o["name"]: o for o in body["outputs"]}
        assert out["probabilities"]["shape"] == [4, 10] and out["digit"]["datatype"] == "INT64"
        probs = np.array(out["probabilities"]["data"]).reshape(4, 10)
        np.testing.assert_allclose(probs, want, atol=1e-6)
        assert out["digit"]["data"] == want.argmax(axis=1).tolist()
        assert len(body["parameters"]["prediction_ids"].split(",")) == 4
    only = client.post(url, json={"inputs": [_tensor(batch)], "outputs": [{"name": "digit"}]})
    assert [o["name"] for o in only.json()["outputs"]] == ["digit"] and "id" not in only.json()


def test_binary_tensors_both_ways(
    client: TestClient, onnx_model: Path, digits: list[np.ndarray]
) -> None:
    batch = np.stack(digits)[:, None].astype(np.float32)
    raw = batch.tobytes()
    head = {
        "inputs": [
            {
                "name": "pixels",
                "datatype": "FP32",
                "shape": list(batch.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    text = json.dumps(head).encode()
    got = client.post(
        f"/v2/models/{onnx_model.name}/infer",
        content=text + raw,
        headers={"Inference-Header-Content-Length": str(len(text))},
    )
    assert got.status_code == 200, got.text
    n = int(got.headers["inference-header-content-length"])
    body = json.loads(got.content[:n])
    sizes = [o["parameters"]["binary_data_size"] for o in body["outputs"]]
    assert sizes == [4 * 10 * 4, 4 * 8] and len(got.content) == n + sum(sizes)
    probs = np.frombuffer(got.content[n : n + sizes[0]], "<f4").reshape(4, 10)
    np.testing.assert_allclose(probs, _offline(onnx_model, batch), atol=1e-6)


ONE = np.zeros((1, 1, 28, 28), np.uint8)
HEAD = json.dumps({"inputs": [_tensor(ONE) | {"data": None}]}).encode()


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{", {}, 400, "not valid JSON"),
        (b"[]", {}, 400, "JSON object"),
        (json.dumps({"inputs": []}), {}, 400, "one input"),
        (json.dumps({"inputs": [_tensor(ONE) | {"name": "x"}]}), {}, 400, "unknown input"),
        (json.dumps({"inputs": [_tensor(ONE) | {"datatype": "INT64"}]}), {}, 400, "datatype"),
        (json.dumps({"inputs": [_tensor(ONE) | {"shape": [1, 28, 28]}]}), {}, 400, "shape"),
        (json.dumps({"inputs": [_tensor(ONE) | {"datatype": ["FP32"]}]}), {}, 400, "datatype"),
        (json.dumps({"inputs": [_tensor(ONE)], "outputs": [{"name": []}]}), {}, 400, "output"),
        (json.dumps({"inputs": [_tensor(ONE) | {"shape": [0, 1, 28, 28]}]}), {}, 400, "shape"),
        (json.dumps({"inputs": [_tensor(ONE) | {"shape": [9, 1, 28, 28]}]}), {}, 413, "at most 8"),
        (json.dumps({"inputs": [_tensor(ONE) | {"data": [0] * 783}]}), {}, 400, "783 values"),
        (json.dumps({"inputs": [_tensor(ONE) | {"data": [0] * 785}]}), {}, 400, "more than"),
        (json.dumps({"inputs": [_tensor(ONE) | {"data": [256] * 784}]}), {}, 400, "0 and 255"),
        (json.dumps({"inputs": [_tensor(ONE) | {"data": [0.5] * 784}]}), {}, 400, "not float"),
        (json.dumps({"inputs": [_tensor(ONE) | {"data": ["7"] * 784}]}), {}, 400, "not str"),
        (json.dumps({"inputs": [_tensor(ONE) | {"data": [True] * 784}]}), {}, 400, "not bool"),
        (json.dumps({"inputs": [_tensor(ONE) | {"data": [[[[[0]]]]]}]}), {}, 400, "deeper"),
        (
            b'{"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 28, 28], '
            b'"data": [' + b"1e999, " * 783 + b"0]}]}",
            {},
            400,
            "0 and 255",
        ),
        (json.dumps({"inputs": [_tensor(ONE)], "outputs": [{"name": "x"}]}), {}, 400, "output"),
        (b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}, 400, "not valid JSON"),
        (HEAD + b"\0" * 700, {"Inference-Header-Content-Length": str(len(HEAD))}, 400, "data"),
        (b"{}", {"Inference-Header-Content-Length": "99"}, 400, "Content-Length"),
        (b"{}", {"Inference-Header-Content-Length": "-1"}, 400, "Content-Length"),
        (json.dumps({"inputs": [_tensor(ONE)]}), {"Content-Encoding": "gzip"}, 415, "uncompr"),
    ],
)
def test_a_bad_tensor_is_a_4xx_that_names_the_problem(
    client: TestClient,
    onnx_model: Path,
    body: str | bytes,
    headers: dict,
    status: int,
    message: str,
) -> None:
    url = f"/v2/models/{onnx_model.name}/infer"
    bad = client.post(url, content=body, headers=headers)
    assert bad.status_code == status, bad.text
    assert set(bad.json()) == {"error"} and message in bad.json()["error"]
    assert client.post(url, json={"inputs": [_tensor(ONE)]}).status_code == 200


def test_binary_size_must_match_and_unknown_models_are_404(
    client: TestClient, onnx_model: Path
) -> None:
    head = {"inputs": [_tensor(ONE) | {"parameters": {"binary_data_size": 784}}]}
    head["inputs"][0].pop("data")
    text = json.dumps(head).encode()
    length = {"Inference-Header-Content-Length": str(len(text))}
    url = f"/v2/models/{onnx_model.name}/infer"
    assert client.post(url, content=text + b"\0" * 784, headers=length).status_code == 200
    short = client.post(url, content=text + b"\0" * 783, headers=length)
    assert short.status_code == 400 and "binary_data_size" in short.json()["error"]
    nan = {"inputs": [_tensor(ONE, "FP32") | {"parameters": {"binary_data_size": 784 * 4}}]}
    nan["inputs"][0].pop("data")
    text = json.dumps(nan).encode()
    raw = struct.pack("<f", float("nan")) * 784
    bad = client.post(
        url,
        content=text + raw,
        headers={**length, **{"Inference-Header-Content-Length": str(len(text))}},
    )
    assert bad.status_code == 400 and "0 and 255" in bad.json()["error"]
    assert client.post("/v2/models/nope/infer", json={}).status_code == 404
    wrong = client.post(f"/v2/models/{onnx_model.name}/versions/v9/infer", json={})
    assert wrong.status_code == 404 and "unknown version" in wrong.json()["error"]


# -- a real client, tritonclient, against a real server -----------------------------------


@pytest.fixture
def served(onnx_model: Path, tmp_path: Path) -> Iterator[Served]:
    s = start_server(onnx_model, [], log=tmp_path / "serve.log")
    yield s
    s.stop()


def _triton_classify(url: str, model: str, digits: np.ndarray, binary: bool) -> np.ndarray:
    """The digits (N, 28, 28) as tritonclient classifies them through `mnist-serve`."""
    import tritonclient.http as httpclient
    from tritonclient.utils import triton_to_np_dtype

    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    (spec,) = client.get_model_metadata(model)["inputs"]
    batch = digits[:, None].astype(triton_to_np_dtype(spec["datatype"]))
    pixels = httpclient.InferInput("pixels", list(batch.shape), spec["datatype"])
    pixels.set_data_from_numpy(batch, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput("digit", binary_data=binary)]
    result = client.infer(model, [pixels], outputs=wanted, request_id="r")
    assert result.get_response()["id"] == "r"
    return result.as_numpy("digit")


def test_tritonclient_classifies_digits(
    served: Served, onnx_model: Path, digits: list[np.ndarray]
) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=served.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(onnx_model.name)
    meta = client.get_model_metadata(onnx_model.name)
    assert meta["inputs"][0]["shape"] == [-1, 1, 28, 28]
    batch = np.stack(digits)
    want = _offline(onnx_model, batch[:, None]).argmax(axis=1)
    for binary in (True, False):
        got = _triton_classify(served.url, onnx_model.name, batch, binary)
        assert got.tolist() == want.tolist()
    pixels = httpclient.InferInput("pixels", [1, 1, 28, 28], "FP32")
    pixels.set_data_from_numpy(batch[:1, None].astype(np.float32))  # all outputs, binary
    result = client.infer(onnx_model.name, [pixels])
    assert result.as_numpy("probabilities").shape == (1, 10)
    text = httpx.get(f"{served.url}/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    infer = (("handler", "/v2/models/{name}/infer"), ("status", "2xx"))
    assert samples[("http_requests_total", infer)] == 3
    predicted = sum(v for (name, _), v in samples.items() if name == "mnist_predictions_total")
    assert predicted == 2 * len(digits) + 1


def test_the_docs_example_runs(served: Served, onnx_model: Path) -> None:
    page = (ROOT / "docs" / "serving.md").read_text()
    section = page.split("## The Open Inference Protocol")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    source = code.group(1).replace("127.0.0.1:8000", served.url.removeprefix("http://"))
    source = source.replace("lenet5_pruned.onnx", onnx_model.name)
    scope: dict = {}
    exec(compile(source, "docs/serving.md", "exec"), scope)
    assert scope["result"].as_numpy("digit").shape == (2,)


def _real_test_digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    from mnist_pipeline.data import mnist_files
    from tests.conftest import REAL_MIRROR

    (_, _), (_, _), (images, _), (labels, _) = mnist_files.FILES
    if not (REAL_MIRROR / images).exists():
        pytest.skip(f"real MNIST files not found at {REAL_MIRROR}; set MNIST_MIRROR")
    return mnist_files.read_idx(REAL_MIRROR / images)[:n], mnist_files.read_idx(
        REAL_MIRROR / labels
    )[:n]


def _served_accuracy(model: Path, tmp_path: Path) -> float:
    """1,000 real test digits through tritonclient and `mnist-serve`, binary and JSON: the
    answers ONNX Runtime gives offline, every one; their accuracy."""
    x, y = _real_test_digits(1000)
    want = _offline(model, x[:, None]).argmax(axis=1)
    s = start_server(model, ["--max-files", "1000"], log=tmp_path / "serve.log")
    try:
        for binary in (True, False):
            assert _triton_classify(s.url, model.name, x, binary).tolist() == want.tolist()
    finally:
        s.stop()
    return float((want == y).mean())


@pytest.mark.slow
def test_tritonclient_classifies_1000_real_digits(real_digits: RealDigits, tmp_path: Path) -> None:
    # The fixture's model had one pass over 12,000 digits: about 91% on these.
    assert _served_accuracy(real_digits.model, tmp_path) >= 0.88


@pytest.mark.slow
def test_tritonclient_with_the_committed_pruned_model(tmp_path: Path) -> None:
    """The pipeline's pruned model, where `dvc checkout` (or `dvc pull`) has put it, at the
    test accuracy `metrics/export.json` records for it (on all 10,000 digits)."""
    model = ROOT / "models" / "lenet5_pruned.onnx"
    if not model.is_file():
        pytest.skip("models/lenet5_pruned.onnx is not checked out: dvc pull")
    known = json.loads((ROOT / "metrics" / "export.json").read_text())["pruned"]["ort_test_acc"]
    assert _served_accuracy(model, tmp_path) >= min(0.98, known - 0.01)
