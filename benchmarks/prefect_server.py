"""A Prefect server in its own process, for figures and tests that need a running one (the
flow against a server, workers reporting to it), as `prefect server start` runs it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def without_prefect_settings(**extra: str) -> dict[str, str]:
    """This process's environment without its `PREFECT_*` settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, **extra}


@contextmanager
def running_server(
    home: Path, database_url: str | None = None, timeout_s: float = 180
) -> Iterator[str]:
    """`prefect server start` on 127.0.0.1 with its state in `home` (SQLite there, or
    `database_url`); yields its API URL once it answers, and stops it on exit."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    settings = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    settings["PREFECT_UI_ENABLED"] = "false"
    if database_url:
        settings["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    log_path = home / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [*cmd, "--port", str(port)],
            env=without_prefect_settings(**settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while not _healthy(api):
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text()[-3000:]
                    raise RuntimeError(f"the Prefect server did not start:\n{tail}")
                time.sleep(0.5)
            yield api
        finally:
            server.terminate()
            server.wait(timeout=60)


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
