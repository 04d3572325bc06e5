"""`mnist-serve` as operators run it: a real process on a port the kernel picks, real signals.

Bounded bodies (and the process's memory), the in-flight limit and the slow-client timeouts,
metrics that count exactly the requests sent, readiness, SIGHUP swaps under traffic, a broken
model refused, and SIGTERM draining requests in flight."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import onnx
import psutil
import pytest
from onnx import TensorProto, helper
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.serving import Served, start_server

JSON = {"content-type": "application/json"}


@pytest.fixture
def model(onnx_model: Path, tmp_path: Path) -> Path:
    """A copy of the test model that a test may replace, as a deployment would."""
    path = tmp_path / "served.onnx"
    shutil.copy(onnx_model, path)
    return path


@pytest.fixture
def served(model: Path, tmp_path: Path) -> Iterator[Served]:
    s = start_server(model, ["--log-level", "info"], log=tmp_path / "serve.log")
    yield s
    s.stop()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape, by (name, sorted labels)."""
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _requests(m: dict, handler: str, status: str) -> float:
    return m.get(("http_requests_total", (("handler", handler), ("status", status))), 0.0)


def _replace(path: Path, data: bytes) -> None:
    """Swap the file in atomically, as a deploy script (or `dvc artifacts get`) should."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _other_version(model: Path) -> bytes:
    """The same network with other metadata: another sha256, still a good model."""
    m = onnx.load(str(model))
    m.metadata_props.add(key="version_note", value="v2")
    return m.SerializeToString()


def _wrong_contract() -> bytes:
    """A valid ONNX model with the right input that gives 784 outputs, not 10 classes."""
    pixels = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 1, 28, 28])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 784])
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["pixels"], ["logits"])], "g", [pixels], [logits]
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)]
    ).SerializeToString()


def _raw(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _status(sock: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before a status line")
        head += chunk
    return int(head.split(b" ", 2)[1])


def test_oversized_bodies_get_413_and_the_process_stays_small(
    served: Served, digits: list[np.ndarray]
) -> None:
    proc = psutil.Process(served.proc.pid)
    pixels = {"pixels": [digits[0].tolist()]}
    assert httpx.post(f"{served.url}/predict", json=pixels).status_code == 200
    before = proc.memory_info().rss
    big = b'{"pixels": [' + b"0, " * (70 * 1024 * 1024 // 3) + b"0]}"  # 70 MB
    with httpx.Client(timeout=30) as client:
        declared = client.post(f"{served.url}/predict", content=big, headers=JSON)
        assert declared.status_code == 413 and "at most" in declared.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, counted as it comes
            for i in range(0, len(big), 1 << 20):
                yield big[i : i + (1 << 20)]

        try:
            streamed = client.post(f"{served.url}/predict", content=chunks(), headers=JSON)
            assert streamed.status_code == 413 and "over the limit" in streamed.json()["error"]
        except httpx.TransportError:  # the server may close while the client still writes
            pass
    grew_mb = (proc.memory_info().rss - before) / 2**20
    assert grew_mb < 8, f"the server grew {grew_mb:.1f} MB on refused bodies"
    assert httpx.post(f"{served.url}/predict", json=pixels).status_code == 200


def test_in_flight_limit_and_slow_clients(model: Path, tmp_path: Path) -> None:
    extra = ["--max-in-flight", "1", "--body-timeout-s", "1", "--keep-alive-s", "1"]
    extra += ["--max-body-bytes", "50000"]
    served = start_server(model, extra, log=tmp_path / "serve.log")
    try:
        slow = _raw(served.url)  # holds the one place: its body never comes
        slow.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 100\r\n\r\n{")  # fmt: skip
        time.sleep(0.3)
        busy = httpx.post(f"{served.url}/predict", json={"pixels": [[0] * 28] * 28})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "in flight" in busy.json()["error"]
        assert httpx.get(f"{served.url}/healthz").status_code == 200  # probes are exempt
        assert _status(slow) == 408  # within --body-timeout-s
        assert httpx.post(f"{served.url}/predict", json={"pixels": [[0] * 28] * 28}).is_success
        part = b'--b\r\ncontent-disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        upload = part + b"\0" * 60_000 + b"\r\n--b--\r\n"
        kind = {"content-type": "multipart/form-data; boundary=b"}
        over = httpx.post(f"{served.url}/predict", content=upload, headers=kind)
        assert over.status_code == 413 and "at most 50,000" in over.json()["error"]
        idle = _raw(served.url)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _status(idle) == 200
        time.sleep(1.8)  # past --keep-alive-s: the server closed the idle connection
        idle.settimeout(2)
        while idle.recv(4096):
            pass
    finally:
        assert served.stop() == 0


def test_metrics_count_exactly_the_requests_sent(served: Served, digits: list[np.ndarray]) -> None:
    for d in digits[:3]:
        assert httpx.post(f"{served.url}/predict", json={"pixels": d.tolist()}).is_success
    both = {"pixels": [d.tolist() for d in digits[:2]]}
    assert httpx.post(f"{served.url}/predict", json=both).is_success
    assert httpx.post(f"{served.url}/predict", content=b"x").status_code == 415
    assert httpx.get(f"{served.url}/nowhere").status_code == 404
    m = _metrics(served.url)
    assert _requests(m, "/predict", "2xx") == 4 and _requests(m, "/predict", "4xx") == 1
    assert _requests(m, "other", "4xx") == 1
    predicted = sum(v for (name, _), v in m.items() if name == "mnist_predictions_total")
    assert predicted == 5
    assert m[("mnist_batch_size_count", ())] == 4 and m[("mnist_batch_size_sum", ())] == 5
    latency = ("http_request_duration_seconds_count", (("handler", "/predict"),))
    assert m[latency] == 5
    info = [k for k, v in m.items() if k[0] == "mnist_model_info" and v == 1]
    assert [dict(k[1])["sha256"] for k in info] == [_sha(Path(served.proc.args[4]))]
    assert m[("mnist_model_reloads_total", ())] == 0


def test_readyz_is_503_until_the_model_has_warmed_up(model: Path, tmp_path: Path) -> None:
    served = start_server(model, ["--warmup-runs", "20000"], log=tmp_path / "s.log", ready=False)
    try:
        assert httpx.get(f"{served.url}/readyz").status_code == 503
        assert _metrics(served.url)[("mnist_ready", ())] == 0
        early = httpx.post(f"{served.url}/predict", json={"pixels": [[0] * 28] * 28})
        assert early.status_code == 503 and "retry-after" in early.headers
        assert httpx.get(f"{served.url}/healthz").status_code == 200  # alive all the same
        deadline = time.monotonic() + 60
        while httpx.get(f"{served.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert httpx.post(f"{served.url}/predict", json={"pixels": [[0] * 28] * 28}).is_success
        assert _metrics(served.url)[("mnist_ready", ())] == 1
    finally:
        served.stop()


def _traffic(url: str, stop: threading.Event, statuses: list[int], shas: list[str]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            r = client.post(f"{url}/predict", json={"pixels": [[0] * 28] * 28})
            statuses.append(r.status_code)
            shas.append(client.get(f"{url}/model").json()["sha256"])


def test_sighup_swaps_under_traffic_with_no_failed_request(served: Served, model: Path) -> None:
    old = _sha(model)
    stop, statuses, shas = threading.Event(), [], []
    clients = [
        threading.Thread(target=_traffic, args=(served.url, stop, statuses, shas))
        for _ in range(4)
    ]
    for t in clients:
        t.start()
    try:
        time.sleep(0.5)
        _replace(model, _other_version(model))
        new = _sha(model)
        served.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while httpx.get(f"{served.url}/model").json()["sha256"] != new:
            assert time.monotonic() < deadline, served.log.read_text()[-2000:]
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in clients:
            t.join()
    assert len(statuses) > 20 and set(statuses) == {200}
    assert shas[0] == old and shas[-1] == new
    m = _metrics(served.url)
    assert m[("mnist_model_reloads_total", ())] == 1
    assert m[("mnist_model_reload_failures_total", ())] == 0


@pytest.mark.parametrize(
    ("broken", "why"),
    [(b"not an onnx model", "cannot load model"), (_wrong_contract(), "10 classes")],
)
def test_a_broken_model_is_refused_and_the_old_one_keeps_serving(
    served: Served, model: Path, broken: bytes, why: str
) -> None:
    old = _sha(model)
    _replace(model, broken)
    served.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while _metrics(served.url)[("mnist_model_reload_failures_total", ())] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert httpx.get(f"{served.url}/model").json()["sha256"] == old
    assert httpx.post(f"{served.url}/predict", json={"pixels": [[0] * 28] * 28}).is_success
    assert httpx.get(f"{served.url}/readyz").status_code == 200
    log = served.log.read_text()
    assert "refused" in log and why in log and f"still serving {old[:12]}" in log


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(
    served: Served, digits: list[np.ndarray]
) -> None:
    body = json.dumps({"pixels": digits[0].tolist()}).encode()
    slow = []
    for _ in range(3):  # in flight: half their body sent when SIGTERM comes
        sock = _raw(served.url)
        sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     + f"content-length: {len(body)}\r\n\r\n".encode() + body[:100])  # fmt: skip
        slow.append(sock)
    time.sleep(0.3)
    served.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.TransportError):  # no new connections once draining
        httpx.get(f"{served.url}/healthz", timeout=2)
    for sock in slow:
        sock.sendall(body[100:])
        assert _status(sock) == 200
    assert served.proc.wait(timeout=30) == 0


@pytest.mark.slow
def test_workers_sum_their_metrics_all_swap_on_sighup_and_drain(
    model: Path, tmp_path: Path
) -> None:
    served = start_server(model, ["--workers", "2", "--log-level", "info"], log=tmp_path / "s.log")
    try:
        sent = 40  # on fresh connections, so both workers take some
        for _ in range(sent):
            r = httpx.post(f"{served.url}/predict", json={"pixels": [[0] * 28] * 28})
            assert r.is_success
        m = _metrics(served.url)
        # Summed across workers, with no `pid` label; readiness once, not once a worker.
        assert _requests(m, "/predict", "2xx") == sent and m[("mnist_ready", ())] == 1
        _replace(model, _other_version(model))
        new = _sha(model)
        served.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while _metrics(served.url)[("mnist_model_reloads_total", ())] < 2:  # one per worker
            assert time.monotonic() < deadline, served.log.read_text()[-3000:]
            time.sleep(0.1)
        shas = {httpx.get(f"{served.url}/model").json()["sha256"] for _ in range(20)}
        assert shas == {new}  # every worker swapped
    finally:
        assert served.stop() == 0
