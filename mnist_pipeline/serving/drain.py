"""Stop `mnist-serve` on SIGTERM without dropping a request: uvicorn's server and `--workers`
supervisor, with a drain in front of uvicorn's own shutdown.

1. SIGTERM: `/readyz` answers 503 at once, and every response says `Connection: close`, so
   clients and the load balancer move their connections elsewhere.
2. For `--drain-s` the server goes on serving, new connections included, so that a load
   balancer notices the 503 before connections are refused.
3. The listening socket stops completing handshakes (a socket filter drops new SYNs), the
   connections the kernel already queued are accepted, and every connection whose request bytes
   have arrived is read. Only then does uvicorn close the listening socket and the idle
   connections, and wait for the requests in flight.

Why step 3: closing a listening socket resets the connections still in its accept queue, and
closing a connection with unread bytes resets it, even when the client sent its whole request
before; uvicorn does both. A SYN dropped instead is sent again by the client and then refused
once the socket is closed. `--grace-s` bounds all three steps; SIGINT (Ctrl+C) skips step 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import select
import signal
import socket
import struct
import sys
import termios
import time
from collections.abc import Iterable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

log = logging.getLogger(__name__)
# A handshake the kernel began before the filter went on completes within a round trip; the
# backlog counts as drained once no connection has been waiting for this long.
SETTLE_S = 0.1
POLL_S = 0.005
HEADERS_S = 1.0
SO_ATTACH_FILTER = 26  # Linux's; Python's socket module does not name it
_draining = False


def draining() -> bool:
    """Whether this process got SIGTERM (or SIGINT) and is on its way out."""
    return _draining


def _begin() -> None:
    global _draining
    _draining = True


class CloseWhenDraining:
    """ASGI middleware: once draining, every response closes its connection, so a keep-alive
    client opens its next one elsewhere instead of racing the server's close."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def closing(message: Any) -> None:
            if message["type"] == "http.response.start" and _draining:
                headers = [*message.get("headers", []), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, closing)


def refuse_handshakes(sock: Any) -> bool:
    """Attach a filter to a listening socket that drops pure SYNs: no connection joins its
    accept queue from now on, while handshakes already under way complete. False where the
    system has no such filter (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    # Classic BPF over the TCP header: flags at byte 13; SYN without ACK -> drop, else keep.
    program = b"".join(
        struct.pack("HBBI", *insn)
        for insn in (
            (0x30, 0, 0, 13),  # ldb [13]
            (0x54, 0, 0, 0x12),  # and #(SYN | ACK)
            (0x15, 0, 1, 0x02),  # jeq #SYN, drop, keep
            (0x06, 0, 0, 0),  # drop: ret #0
            (0x06, 0, 0, 0xFFFFFFFF),  # keep: ret #-1
        )
    )
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HP", len(program) // 8, ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as err:
        log.warning("cannot hold back new connections while draining: %s", err)
        return False
    return True


async def accept_the_backlog(listeners: list[Any], deadline: float) -> None:
    """Keep the event loop accepting until no connection has waited in the listeners' accept
    queues for `SETTLE_S` (a listening socket is readable while its queue is not empty)."""
    for sock in listeners:
        refuse_handshakes(sock)
    poller = select.poll()
    for sock in listeners:
        poller.register(sock.fileno(), select.POLLIN)
    quiet_since = time.monotonic()
    while (now := time.monotonic()) < deadline and now - quiet_since < SETTLE_S:
        await asyncio.sleep(POLL_S)
        if poller.poll(0):
            quiet_since = time.monotonic()


def _unread_bytes(transport: Any) -> int:
    sock = transport.get_extra_info("socket")
    if sock is None or transport.is_closing():
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    except OSError:
        return 0


def unanswered(connection: Any) -> str | None:
    """What an idle-looking connection (no request in flight, which uvicorn would close)
    holds: "unread" bytes in its socket, a request "begun" but its headers not complete
    (uvicorn's httptools protocol starts a fresh `scope` on a request's first byte), or None."""
    cycle = getattr(connection, "cycle", None)
    if cycle is not None and not cycle.response_complete:
        return None  # in flight: uvicorn answers it, then closes
    if _unread_bytes(connection.transport) > 0:
        return "unread"
    scope = getattr(connection, "scope", None)
    return "begun" if scope is not None and (cycle is None or cycle.scope is not scope) else None


async def read_what_arrived(connections: Iterable[Any], deadline: float) -> None:
    """Let the event loop read every connection until none holds an unanswered request, so
    that uvicorn's shutdown finds those requests in flight instead of closing on them. Headers
    still coming get `HEADERS_S`; a client slower than that is closed, as uvicorn would."""
    headers_until = time.monotonic() + HEADERS_S
    while (now := time.monotonic()) < deadline:
        held = {unanswered(c) for c in list(connections)}
        if "unread" not in held and ("begun" not in held or now >= headers_until):
            return
        await asyncio.sleep(POLL_S)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with the drain (this module's docstring) before its shutdown."""

    def __init__(self, config: uvicorn.Config, drain_s: float) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self._signal: int | None = None
        self._stop_at = self._deadline = 0.0
        self._announced = False

    def _grace_s(self) -> float:
        grace = self.config.timeout_graceful_shutdown
        return float("inf") if grace is None else float(grace)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signal is None:  # a signal handler: no logging, no waiting
            _begin()
            self._signal = sig
            now, grace = time.monotonic(), self._grace_s()
            delay = min(self.drain_s, grace) if sig == signal.SIGTERM else 0.0
            self._stop_at, self._deadline = now + delay, now + grace
        elif sig != signal.SIGTERM:  # Ctrl+C again: uvicorn's way, stop now and then force
            super().handle_exit(sig, frame)
        # A SIGTERM again (systemd signals every process, and the parent passes it on): ignored.

    async def on_tick(self, counter: int) -> bool:
        if self._signal is not None and not self.should_exit:
            left = self._stop_at - time.monotonic()
            if left <= 0:
                super().handle_exit(self._signal, None)  # uvicorn's shutdown from here
            elif not self._announced:
                self._announced = True
                name = signal.Signals(self._signal).name
                log.info("%s: /readyz answers 503; serving %.1f s more, then draining", name, left)
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if not self.force_exit:
            if self._signal is None:  # stopped for another reason (--limit-max-requests)
                _begin()
                self._deadline = time.monotonic() + self._grace_s()
            listeners = list(sockets or (s for server in self.servers for s in server.sockets))
            await accept_the_backlog(listeners, self._deadline)
            await read_what_arrived(self.server_state.connections, self._deadline)
            if self.config.timeout_graceful_shutdown is not None:
                # What is left of --grace-s; uvicorn passes it to asyncio.wait_for, after 0.1 s.
                left = max(0.0, self._deadline - time.monotonic() - 0.1)
                self.config.timeout_graceful_shutdown = left  # type: ignore[assignment]
        await super().shutdown(sockets)


class DrainingWorker(Process):
    """A `--workers` process, running a `DrainingServer`."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], drain_s: float):
        self.drain_s = drain_s  # before uvicorn's __init__, which hands this object to the child
        super().__init__(config, sockets)

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(self.config, self.drain_s)
        return self._server


class Supervisor(Multiprocess):
    """uvicorn's `--workers` parent, with workers that drain. SIGTERM reaches them at once
    (uvicorn's parent looks at its signals twice a second), and once they are told to stop the
    parent lets go of the listening socket, so that it closes when the last worker closes it."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], drain_s: float):
        super().__init__(config, sockets)
        self.drain_s = drain_s
        signal.signal(signal.SIGTERM, self._pass_on_term)

    def _pass_on_term(self, sig: int, frame: FrameType | None) -> None:
        self.signal_queue.append(sig)
        for process in list(self.processes):
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    def _worker(self) -> DrainingWorker:
        process = DrainingWorker(self.config, self.sockets, self.drain_s)
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes.extend(self._worker() for _ in range(self.processes_num))

    def keep_subprocess_alive(self) -> None:
        # uvicorn's, replacing a dead worker with a draining one.
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logging.getLogger("uvicorn.error").error(
                    f"Child process [{process.pid}] failed to start, stopping the parent process."
                )
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logging.getLogger("uvicorn.error").info(f"Child process [{process.pid}] died")
            self.processes[idx] = self._worker()

    def terminate_all(self) -> None:
        super().terminate_all()
        for sock in self.sockets:
            sock.close()
