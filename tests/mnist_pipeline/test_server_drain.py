"""SIGTERM under traffic, on a real `mnist-serve` process: `/readyz` turns 503 at once, the
server serves on for `--drain-s`, and then no request gets a reset: each one is answered, or
its connection is refused (`mnist_pipeline.serving.drain`)."""

from __future__ import annotations

import collections
import json
import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from benchmarks.serving import start_server

BODY = json.dumps({"pixels": [[0] * 28] * 28}).encode()
REQUEST = (b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           + f"content-length: {len(BODY)}\r\n\r\n".encode() + BODY)  # fmt: skip


def _outcome(port: int) -> str:
    """One request on a fresh connection: its status, "refused", "reset" or "closed"."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    except ConnectionRefusedError:
        return "refused"
    with sock:
        try:
            sock.sendall(REQUEST)
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    return "closed"
                head += chunk
        except ConnectionResetError:
            return "reset"
        return head.split(b" ", 2)[1].decode()


def _client(port: int, start_s: float, outcomes: list[str]) -> None:
    """Requests one after another, each on a new connection, until one is refused."""
    time.sleep(start_s)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        outcomes.append(_outcome(port))
        if outcomes[-1] != "200":
            return


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_among_64_concurrent_clients_resets_none(
    onnx_model: Path, tmp_path: Path, workers: int
) -> None:
    """64 clients start 3 ms apart and SIGTERM comes 100 ms in, with no drain delay: requests
    in flight, queued in the backlog, and arriving as the server stops. uvicorn's own shutdown
    reset 38 of the 64 clients with one worker, and all 64 with two."""
    for run in range(3):
        served = start_server(
            onnx_model, ["--workers", str(workers)], log=tmp_path / f"serve{run}.log"
        )
        port = urlsplit(served.url).port
        assert port is not None
        outcomes: list[str] = []
        clients = [
            threading.Thread(target=_client, args=(port, i * 0.003, outcomes)) for i in range(64)
        ]
        for t in clients:
            t.start()
        time.sleep(0.1)
        served.proc.send_signal(signal.SIGTERM)
        for t in clients:
            t.join()
        assert served.proc.wait(timeout=30) == 0
        counts = collections.Counter(outcomes)
        assert set(counts) == {"200", "refused"}, (run, counts)
        assert counts["refused"] == 64  # each client ends refused, none otherwise


def _status_and_connection(url: str, client: httpx.Client | None = None) -> tuple[int, str]:
    r = (client or httpx).post(f"{url}/predict", json={"pixels": [[0] * 28] * 28}, timeout=10)
    return r.status_code, r.headers.get("connection", "")


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_readyz_turns_503_at_once_and_the_server_serves_through_the_drain_delay(
    onnx_model: Path, tmp_path: Path, workers: int
) -> None:
    drain_s = 1.5
    extra = ["--workers", str(workers), "--drain-s", str(drain_s)]
    served = start_server(onnx_model, extra, log=tmp_path / "serve.log")
    with httpx.Client() as kept:  # a keep-alive connection opened before SIGTERM
        assert _status_and_connection(served.url, kept) == (200, "")  # HTTP/1.1: kept open
        served.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        time.sleep(0.2)
        # Every worker says so: fresh connections land on either.
        assert {httpx.get(f"{served.url}/readyz").status_code for _ in range(6)} == {503}
        assert httpx.get(f"{served.url}/healthz").status_code == 200  # alive all the same
        # Still served, and told to take the next request elsewhere.
        assert _status_and_connection(served.url) == (200, "close")
        assert _status_and_connection(served.url, kept) == (200, "close")
        assert time.monotonic() - sent < drain_s
    assert served.proc.wait(timeout=30) == 0
    assert time.monotonic() - sent >= drain_s
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{served.url}/healthz")


def test_grace_s_bounds_the_drain_delay(onnx_model: Path, tmp_path: Path) -> None:
    extra = ["--drain-s", "60", "--grace-s", "1"]
    served = start_server(onnx_model, extra, log=tmp_path / "serve.log")
    served.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    time.sleep(0.2)
    assert httpx.get(f"{served.url}/readyz").status_code == 503
    assert served.proc.wait(timeout=10) == 0
    assert time.monotonic() - sent < 3
