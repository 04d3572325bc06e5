"""The model server: each endpoint, every kind of bad input (after which it still serves),
concurrent requests, and the same answers as `mnist-predict`."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mnist_pipeline.onnx import runtime
from mnist_pipeline.serving import drain, predict, server


def _png_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buf, format=fmt)
    return buf.getvalue()


def _declared_size_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


# Arrays nested deeper than Python's JSON parser recurses: it gives up with a RecursionError.
DEEP = b'{"pixels": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
MULTIPART = "multipart/form-data"  # no boundary: Starlette refuses it (400)


@pytest.fixture(scope="module")
def client(onnx_model: Path) -> Iterator[TestClient]:
    app = server.create_app(onnx_model, server.Limits(max_bytes=200_000, max_files=8))
    with TestClient(app) as c:  # the lifespan loads the model
        _wait_ready(c)
        yield c


def _wait_ready(c: TestClient) -> None:
    for _ in range(200):
        if c.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the model did not load")


def test_health_model_card_and_docs(client: TestClient, onnx_model: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    card = client.get("/model").json()
    assert card["name"] == onnx_model.name and len(card["sha256"]) == 64
    assert "raw grayscale pixel values 0-255" in card["input_contract"]
    assert card["input"]["name"] == "pixels"
    assert card["sha256"] == hashlib.sha256(onnx_model.read_bytes()).hexdigest()
    assert str(onnx_model.parent) not in json.dumps(card), "no server paths"
    assert client.get("/readyz").json() == {"status": "ready"}
    # Swagger UI loads its scripts from a CDN: off unless asked for (`--docs`).
    assert client.get("/docs").status_code == 404
    schema = client.get("/openapi.json").json()
    assert "/predict" in schema["paths"] and "/readyz" in schema["paths"]
    assert {"ModelInfo", "ServedPrediction", "ErrorOut"} <= set(schema["components"]["schemas"])


def test_mnist_ready_says_what_readyz_says(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "\nmnist_ready 1.0\n" in client.get("/metrics").text
    monkeypatch.setattr(drain, "_draining", True)  # as SIGTERM's handler leaves it
    assert client.get("/readyz").json() == {"status": "draining"}
    assert "\nmnist_ready 0.0\n" in client.get("/metrics").text


def test_uploads_get_the_answers_of_mnist_predict(
    client: TestClient, onnx_model: Path, digits: list[np.ndarray], tmp_path: Path
) -> None:
    files, paths = [], []
    for i, d in enumerate(digits):
        data = _png_bytes(255 - d) if i % 2 else _png_bytes(d, "JPEG")  # both polarities
        files.append(("file", (f"d{i}.img", data)))
        paths.append(tmp_path / f"d{i}.img")
        paths[-1].write_bytes(data)
    got = client.post("/predict", files=files).json()
    sess = runtime.session(onnx_model)
    want = predict.classify(sess, [predict.load_digit(p) for p in paths], [p.name for p in paths])
    assert [{k: v for k, v in r.items() if k != "id"} for r in got] == [
        p.model_dump() for p in want
    ]
    assert len({r["id"] for r in got}) == len(got), "each prediction has its feedback id"
    assert [r["file"] for r in got] == [f"d{i}.img" for i in range(len(digits))]


def test_json_pixels(client: TestClient, digits: list[np.ndarray], onnx_model: Path) -> None:
    one = client.post("/predict", json={"pixels": digits[0].tolist()}).json()
    many = client.post("/predict", json={"pixels": [d.tolist() for d in digits]}).json()
    assert len(one) == 1 and len(many) == len(digits) and one[0]["digit"] == many[0]["digit"]
    (ref,) = predict.classify(runtime.session(onnx_model), [digits[0]], ["pixels[0]"])
    assert one[0] == ref.model_dump() | {"id": one[0]["id"]}


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        ({"files": [("file", ("notes.txt", b"not an image"))]}, 422, "not an image file"),
        ({"files": [("file", ("cut.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 30))]}, 422, "image"),
        ({"files": [("file", ("big.png", b"\0" * 200_001))]}, 413, "larger than the limit"),
        ({"files": [("file", ("bomb.png", _declared_size_png(10_000, 10_000)))]}, 422, "pixels"),
        ({"files": [("file", (f"{i}.png", b"x")) for i in range(9)]}, 413, "at most 8"),
        ({"json": {"pixels": [[0] * 27] * 28}}, 422, "shape"),
        ({"json": {"pixels": [[300] * 28] * 28}}, 422, "between 0 and 255"),
        ({"json": {"pixels": "abc"}}, 422, "list of numbers"),
        ({"json": {"image": []}}, 422, "expected a JSON object"),
        ({"json": {"pixels": [[[0] * 28] * 28] * 9}}, 413, "at most 8"),
        # Checked in Python before any conversion: no 500 from NumPy or the JSON parser.
        ({"json": {"pixels": [[10**400] + [0] * 27] * 28}}, 422, "between 0 and 255"),
        ({"json": {"pixels": [["7"] * 28] * 28}}, 422, "numbers, not str"),
        ({"json": {"pixels": [[True] * 28] * 28}}, 422, "numbers, not bool"),
        ({"json": {"pixels": [[[[0]] * 28] * 28]}}, 422, "numbers, not list"),
        ({"json": {"pixels": [[[[0] * 28] * 28]]}}, 422, "shape"),
        ({"content": DEEP, "headers": {"content-type": "application/json"}}, 422, "nested"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "multipart"),
        ({"files": {"other": (None, "x")}}, 422, "no image"),
        ({"content": b"--x\r\nbroken", "headers": {"content-type": MULTIPART}}, 400, "boundary"),
    ],
)
def test_bad_input_is_a_4xx_that_names_the_problem_and_the_server_goes_on(
    client: TestClient,
    digits: list[np.ndarray],
    request_kwargs: dict,
    status: int,
    message: str,
) -> None:
    bad = client.post("/predict", **request_kwargs)
    assert bad.status_code == status, bad.text
    assert set(bad.json()) == {"error", "file"} and message in bad.json()["error"]
    good = client.post("/predict", files=[("file", ("ok.png", _png_bytes(digits[0])))])
    assert good.status_code == 200 and good.json()[0]["file"] == "ok.png"


def _no_id(answer: dict) -> dict:
    """A prediction without its feedback id, which is new every time."""
    assert len(answer.pop("id")) == 32
    return answer


def test_concurrent_requests_get_the_sequential_answers(
    client: TestClient, digits: list[np.ndarray]
) -> None:
    bodies = [_png_bytes(d) for d in digits] * 4

    def ask(data: bytes) -> dict:
        return _no_id(client.post("/predict", files=[("file", ("d.png", data))]).json()[0])

    sequential = [ask(b) for b in bodies]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(ask, bodies))
    assert concurrent == sequential


def test_binds_this_machine_only_unless_told(onnx_model: Path) -> None:
    args = server.parse_args(["--model", str(onnx_model)])
    assert args.host == "127.0.0.1"
    assert server.parse_args(["--model", "m", "--host", "0.0.0.0"]).host == "0.0.0.0"
    assert server.main(["--model", "missing.onnx"]) == 2


def test_micro_batching_gives_the_same_answers_in_fewer_runs(
    client: TestClient, onnx_model: Path, digits: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[int] = []
    classify = predict.classify

    def counted(sess: object, batch: list, names: list) -> list:
        runs.append(len(batch))
        return classify(sess, batch, names)

    bodies = [_png_bytes(d) for d in digits] * 2

    def ask(c: TestClient, data: bytes) -> dict:
        return _no_id(c.post("/predict", files=[("file", ("d.png", data))]).json()[0])

    want = [ask(client, b) for b in bodies]
    monkeypatch.setattr(predict, "classify", counted)
    # One event loop serves every request, as under uvicorn.
    with TestClient(server.create_app(onnx_model, max_batch=16, max_wait_ms=200)) as batched:
        _wait_ready(batched)
        runs.clear()  # the warm-up's runs
        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            got = list(pool.map(lambda b: ask(batched, b), bodies))
        # A request with more digits than --max-batch runs alone, whole.
        many = batched.post("/predict", json={"pixels": [d.tolist() for d in digits] * 5})
    assert got == want
    assert sum(runs[:-1]) == len(bodies) and max(runs[:-1]) > 1, runs  # requests shared runs
    assert len(many.json()) == 5 * len(digits) and runs[-1] == 5 * len(digits)


def test_workers_get_the_options_the_parent_parsed(
    onnx_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: dict = {}

    class Supervisor:
        def __init__(self, config: object, sockets: list, drain_s: float) -> None:
            started.update(config=config, sockets=sockets, drain_s=drain_s)

        def run(self) -> None:
            started["sockets"][0].close()

    monkeypatch.setattr(server, "Supervisor", Supervisor)
    monkeypatch.delenv(server.OPTIONS_ENV, raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    argv = ["--model", str(onnx_model), "--workers", "2", "--max-files", "3", "--max-batch", "4"]
    argv += ["--port", "0", "--drain-s", "2.5"]
    assert server.main(argv) == 0
    config, drain_s = started["config"], started["drain_s"]
    assert config.app == "mnist_pipeline.serving.server:app_from_env" and config.workers == 2
    assert drain_s == 2.5
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)  # this process: one registry
    with TestClient(server.app_from_env()) as worker:
        _wait_ready(worker)
        sha = worker.get("/model").json()["sha256"]
        assert sha == hashlib.sha256(onnx_model.read_bytes()).hexdigest()
        too_many = worker.post("/predict", json={"pixels": [[[0] * 28] * 28] * 4})
    assert too_many.status_code == 413 and "at most 3" in too_many.json()["error"]
    with pytest.raises(SystemExit):
        server.parse_args(["--model", "m", "--workers", "0"])


def test_every_refusal_has_the_one_shape_and_docs_only_when_asked(onnx_model: Path) -> None:
    with TestClient(server.create_app(onnx_model, docs=True)) as c:
        assert c.get("/docs").status_code == 200
        assert c.get("/no-such-page").json() == {"error": "Not Found", "file": None}
        assert c.put("/predict").json() == {"error": "Method Not Allowed", "file": None}


def test_the_drawing_page_sends_security_headers(client: TestClient) -> None:
    page = client.get("/")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "script-src 'sha256-" in policy and "unsafe-inline" not in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"


def test_a_model_bundle_is_served_as_its_version_with_its_card(
    onnx_model: Path, tmp_path: Path, synthetic_profile: Path
) -> None:
    """What the container image runs (`--model /srv/model`), through the same JSON options as
    `main` makes, in which the card's path has become a string; its drift profile is the one
    the bundle holds."""
    from mnist_pipeline.serving import bundle, served_model

    fields = {"name": "digits", "version": "v1.0.0", "stage": "prod", "commit": "c" * 40}
    data = onnx_model.read_bytes()
    profile = synthetic_profile.read_bytes()
    info = bundle.write(tmp_path / "b", {**fields, "source": "x"}, data, "# c\n", profile)
    args = server.parse_args(["--model", str(tmp_path / "b")])
    source, _ = served_model.read_resolved(served_model.ModelSpec(args.model))
    options = json.loads(json.dumps(server.app_options(args, source), default=str))
    with TestClient(server.app_from_options(options)) as c:
        _wait_ready(c)
        model = c.get("/model").json()
        assert {k: model[k] for k in fields} == fields and model["sha256"] == info["sha256"]
        assert model["card"] and c.get("/model/card").text == "# c\n"
        assert model["drift_profile"]["file"] == bundle.PROFILE
        assert c.get("/monitoring/drift").json()["enabled"]
        # The Open Inference Protocol names the registered version, not the bytes' sha256.
        assert c.get("/v2/models/digits").json()["versions"] == ["v1.0.0"]
        assert c.get("/v2/models/digits/versions/v1.0.0/ready").status_code == 200
    (tmp_path / "b" / bundle.MODEL).write_bytes(data + b"\0")
    assert server.main(["--model", str(tmp_path / "b")]) == 2  # not the bytes it records
