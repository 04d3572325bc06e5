"""What one request may cost `mnist-serve`: its body's size, its pace, and a place in flight.

`RequestLimits` is ASGI middleware around the whole app, so the limits hold before FastAPI or
Starlette parse or spool anything:

- The body is counted as it streams in, whether it declares `Content-Length` or comes chunked:
  a declared length over the cap is refused before a byte is read, and a body that grows past
  it is cut there. Either way the answer is 413 with a JSON message, and memory stays bounded
  by the cap, not by what the client sends. JSON and multipart have their own caps: both fit
  the largest request the other limits allow (`--max-files` digits, each file at most
  `--max-bytes`), and JSON's is far smaller.
- A body whose next chunk does not arrive within `body_timeout_s` gets 408: a slow client
  cannot hold a place in flight for ever.
- At most `max_in_flight` requests run at once; the next gets 503 with `Retry-After`, so a
  load balancer retries elsewhere. The probes and `/metrics` are exempt: they stay cheap, and
  an operator must see a saturated server as alive and scrapeable.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnist_pipeline.serving import predict

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_FILES = 64
# A multipart part's headers and boundary, at most (a long file name fits too).
PART_OVERHEAD = 4096
# The longest JSON text of one pixel: a float written at full precision, its comma and the
# indentation of a pretty-printed 3-deep list ("  254.99999999999997,\n" is 22).
JSON_BYTES_PER_PIXEL = 32
DEFAULT_MAX_IN_FLIGHT = 64
DEFAULT_BODY_TIMEOUT_S = 30.0
RETRY_AFTER_S = 1
# Paths that never wait for a place in flight: liveness, readiness and the scrape.
EXEMPT = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES  # per uploaded file
    max_files: int = DEFAULT_MAX_FILES  # per request, files or JSON digits
    max_pixels: int = predict.MAX_PIXELS  # per image, as its header declares
    max_body: int | None = None  # multipart body; None: what max_files files of max_bytes need
    max_json_body: int | None = None  # any other body; None: what max_files digits need
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S

    def body_cap(self, content_type: str) -> int:
        """The most bytes a body of this type may have."""
        if content_type.startswith("multipart/form-data"):
            return self.max_body or self.max_files * (self.max_bytes + PART_OVERHEAD)
        pixels = predict.FIELD * predict.FIELD
        return self.max_json_body or self.max_files * pixels * JSON_BYTES_PER_PIXEL + 1024


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def reply(
    send: Send, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    """A JSON error `{"error", "file"}` like the app's own, closing the connection: the rest of
    a refused body is not read."""
    body = json.dumps({"error": message, "file": None}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [(b"connection", b"close")]
    head += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """The middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app, self.limits = app, limits
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limits.max_in_flight:
            await reply(
                send,
                503,
                f"busy: {self.limits.max_in_flight} requests in flight; retry shortly",
                {"retry-after": str(RETRY_AFTER_S)},
            )
            return
        self.in_flight += 1
        try:
            await self._limited(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        cap = self.limits.body_cap(_header(scope, b"content-type") or "")
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            await reply(send, 413, f"the body is {int(declared):,} bytes; at most {cap:,}")
            return
        seen, complete = 0, False
        refused = started = False

        async def limited_receive() -> Message:
            nonlocal seen, complete, refused
            if complete or refused:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.limits.body_timeout_s)
            except TimeoutError:
                refused = True
                await refuse(408, f"the body did not arrive within {self.limits.body_timeout_s} s")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > cap:
                    refused = True
                    await refuse(413, f"the body is over the limit of {cap:,} bytes")
                    # The app sees a client that went away, and stops reading.
                    return {"type": "http.disconnect"}
            return message

        async def refuse(status: int, message: str) -> None:
            if not started:
                await reply(send, status, message)

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:  # the refusal was the answer; drop what the app makes of the disconnect
                return
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise
