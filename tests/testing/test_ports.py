"""A server whose free port another process took first starts again on another one, instead of
failing the benchmark or test: the Prefect server, for real (`mnist-serve` binds port 0 and
says which port it got)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing import ports
from testing.prefect_server import running_server


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A port another process listens on, which `free_port` hands out first, as it would had
    that process bound it between `free_port` and the server."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        real = ports.free_port
        handed = iter([port])
        monkeypatch.setattr(ports, "free_port", lambda: next(handed, None) or real())
        yield port


def _bind(port: int) -> socket.socket:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError as err:
        s.close()
        if err.errno == errno.EADDRINUSE:
            raise ports.PortTaken(str(err)) from err
        raise
    return s


def test_a_taken_port_is_given_up_for_another(taken: int) -> None:
    s, port = ports.on_a_free_port(_bind)
    with s:
        assert port != taken and s.getsockname()[1] == port


def test_it_gives_up_after_its_attempts(taken: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "free_port", lambda: taken)
    with pytest.raises(ports.PortTaken):
        ports.on_a_free_port(_bind, attempts=3)


def test_each_server_says_its_port_was_taken_in_words_we_read() -> None:
    said = [
        "ERROR:    [Errno 98] error while attempting to bind on address: address already in use",
        "Port 4200 is already in use. Please specify a different port with the --port flag.",
        'LOG:  could not bind IPv4 address "127.0.0.1": Address already in use',
        "The server socket has failed to listen on any local network address. (EADDRINUSE)",
    ]
    assert all(ports.port_taken(line) for line in said)
    assert not ports.port_taken("could not connect to server: Connection refused")


@pytest.mark.slow  # a Prefect server start
def test_the_prefect_server_starts_on_another_port_when_its_own_was_taken(
    tmp_path: Path, taken: int
) -> None:
    with running_server(tmp_path / "home") as api:
        assert f":{taken}/" not in api
