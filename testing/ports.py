"""Ports on 127.0.0.1 for the servers the benchmarks and tests start (mnist-serve, Prefect,
PostgreSQL, torchrun's rendezvous).

None of those servers can be asked for port 0 and tell which port it got, so a port is picked
free and handed over: another process can take it in between. `on_a_free_port` starts again
on another port when the server says so ("address already in use"), instead of failing.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
ATTEMPTS = 5


class PortTaken(RuntimeError):
    """The server could not bind its port: another process took it after `free_port`."""


def free_port() -> int:
    """A port nothing listens on now (bound and released: take it with `on_a_free_port`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(output: str) -> bool:
    """Whether a server's output says its port was in use (EADDRINUSE, as each words it)."""
    text = output.lower()
    return any(words in text for words in ("already in use", "errno 98", "eaddrinuse"))


def on_a_free_port(start: Callable[[int], T], attempts: int = ATTEMPTS) -> tuple[T, int]:
    """`start(port)` on a free port, and its port; on another one each time it raises
    `PortTaken`, up to `attempts` times."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        try:
            return start(port), port
        except PortTaken:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def answers_200(url: str, timeout_s: float = 2) -> bool:
    """Whether a GET on `url` answers 200 now (a server's health or readiness probe)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status == 200
    except OSError:
        return False
