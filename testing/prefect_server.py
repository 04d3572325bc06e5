"""A Prefect server in its own process, for figures and tests that need a running one (the
flow against a server, deployments and workers, Dask workers reporting to it), as
`prefect server start` runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from testing.ports import PortTaken, answers_200, on_a_free_port, port_taken


def without_prefect_settings(**extra: str) -> dict[str, str]:
    """This process's environment without its `PREFECT_*` settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, **extra}


def server_settings(home: Path) -> dict[str, str]:
    """The settings the server runs with, which its clients share: its home, no telemetry."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }


@contextmanager
def running_server(
    home: Path,
    database_url: str | None = None,
    timeout_s: float = 180,
    auth_string: str | None = None,
) -> Iterator[str]:
    """`prefect server start` on 127.0.0.1 with its state in `home` (SQLite there, or
    `database_url`), and basic auth with `auth_string` (`user:password`) if given; yields its
    API URL once it answers, and stops it on exit. Another port if its port was taken."""
    home.mkdir(parents=True, exist_ok=True)
    settings = server_settings(home)
    if database_url:
        settings["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    if auth_string:
        settings["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    server, port = on_a_free_port(partial(_start, home, settings, timeout_s))
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        stop_group(server)


def _start(home: Path, settings: dict[str, str], timeout_s: float, port: int) -> Any:
    """The server on `port`, once it answers; `PortTaken` if another process has it."""
    api = f"http://127.0.0.1:{port}/api"
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    log_path = home / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [*cmd, "--port", str(port)],
            env=without_prefect_settings(**settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stopped as a group, with anything it started
        )
    deadline = time.monotonic() + timeout_s
    while not answers_200(f"{api}/health"):  # basic auth leaves it open
        if server.poll() is not None or time.monotonic() > deadline:
            stop_group(server)
            tail = log_path.read_text()[-3000:]
            error = PortTaken if port_taken(tail) else RuntimeError
            raise error(f"the Prefect server did not start:\n{tail}")
        time.sleep(0.5)
    return server


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process's group, SIGKILL it if it is still there 20 s later."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
