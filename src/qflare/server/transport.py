"""Slow and oversized clients at the HTTP layer: uvicorn's h11 protocol with header and body timeouts.

uvicorn has a keep-alive timeout (idle between requests) and an h11 buffer limit, but a client that
sends half a header, or trickles a body one byte at a time, holds its connection forever, and an
oversized header is answered 400. This protocol adds, per connection:

- a **header deadline**: the request line and headers complete within ``header_timeout`` seconds of
  the connection (or of the previous response), else the connection is closed;
- a **header size limit**: more than ``max_header_bytes`` before the blank line is answered
  ``431`` (with the error JSON) and the connection closed;
- **body timeouts**: while the body is being read, no gap between chunks longer than
  ``body_chunk_timeout`` and the whole body within ``body_timeout`` seconds; else the connection is
  closed (the route sees a client disconnect, logged in one line). A body answered before it was read
  (``503 server_busy``) is discarded under the same timeouts, and the connection then serves the next
  request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from qflare.config import ServerConfig

log = logging.getLogger("qflare.server")


class Limits:
    def __init__(self, header_timeout: float, max_header_bytes: int, body_chunk_timeout: float,
                 body_timeout: float) -> None:
        self.header_timeout, self.max_header_bytes = header_timeout, max_header_bytes
        self.body_chunk_timeout, self.body_timeout = body_chunk_timeout, body_timeout


def _431() -> bytes:
    body = json.dumps({"error": {"reason": "header_too_large", "message": "request header fields too large"}})
    return (f"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n{body}").encode()


class GuardedH11Protocol(H11Protocol):
    """:class:`H11Protocol` with the deadlines and the 431 of the module docstring (``limits`` class attribute)."""

    limits = Limits(10.0, 16384, 10.0, 120.0)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head = b""
        self._in_head = True
        self._timer: asyncio.TimerHandle | None = None
        self._body_deadline: float | None = None
        self._drain_cycle: Any = None  # the cycle whose unread body is being discarded after its answer
        self._arm(self.limits.header_timeout)

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            if not self._in_head:  # a body cut off (the route sees a disconnect); header deadlines are routine
                log.info("connection closed: request body not received within the body timeouts (%s)",
                         "discarded after its answer" if self._drain_cycle is not None else "being read")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._drain_cycle is not None:
            self._drain(data)
            return
        if self._in_head:
            self._head = (self._head + data)[: self.limits.max_header_bytes + 4]
            end = self._head.find(b"\r\n\r\n")
            if end < 0 and len(self._head) > self.limits.max_header_bytes or end > self.limits.max_header_bytes:
                self._disarm()
                self.transport.write(_431())
                self.transport.close()
                return
            if end >= 0:
                self._in_head, self._head = False, b""
                self._disarm()
        super().data_received(data)
        self._time_body()

    def _time_body(self) -> None:
        cycle = self.cycle
        if not self._in_head and cycle is not None and cycle.more_body and not cycle.response_complete:
            now = self.loop.time()
            if self._body_deadline is None:
                self._body_deadline = now + self.limits.body_timeout
            self._arm(max(0.0, min(self.limits.body_chunk_timeout, self._body_deadline - now)))
        elif not self._in_head:
            self._disarm()  # the body is in: the route may take its time

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._head, self._body_deadline = b"", None
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            # Answered before the body was read (503 server_busy, 413): uvicorn discards the rest of the
            # body and keeps the connection. Those bytes are no header: time them as a body, not a head
            # (a head limit on them answered 431 and reset the connection under the device's answer).
            self._in_head, self._drain_cycle = False, self.cycle
            self._body_deadline = self.loop.time() + self.limits.body_timeout
            self._arm(self.limits.body_chunk_timeout)
            return
        self._next_head()

    def _next_head(self) -> None:
        # The next request on this connection gets its own header deadline (the keep-alive timer of
        # uvicorn is cancelled by the first byte of a next request, and half a header would then hang).
        self._in_head, self._head, self._body_deadline = True, b"", None
        if not self.transport.is_closing():
            self._arm(self.limits.header_timeout)

    def _drain(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not self._drain_cycle:  # the next request began within these bytes
            self._drain_cycle, self._body_deadline = None, None
            self._time_body()
        elif self.conn.their_state is not h11.SEND_BODY:  # the discarded body ended
            self._drain_cycle = None
            self._next_head()
        elif self._body_deadline is not None:
            self._arm(max(0.0, min(self.limits.body_chunk_timeout, self._body_deadline - self.loop.time())))

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def limits_for(cfg: ServerConfig) -> Limits:
    """``cfg``'s header and body deadlines and header size limit."""
    return Limits(cfg.header_timeout_seconds, cfg.max_header_bytes, cfg.body_chunk_timeout_seconds,
                  cfg.body_timeout_seconds)


def guarded_protocol(cfg: ServerConfig) -> type[GuardedH11Protocol]:
    """A protocol class bound to ``cfg``'s limits (pass as ``uvicorn.run(..., http=...)``)."""
    return type("BoundGuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits_for(cfg)})


def uvicorn_options(cfg: ServerConfig) -> dict[str, Any]:
    """What ``qflare server`` passes to uvicorn for ``cfg``'s transport limits."""
    return {"http": guarded_protocol(cfg), "timeout_keep_alive": cfg.keep_alive_seconds,
            "h11_max_incomplete_event_size": cfg.max_header_bytes + 1024}
