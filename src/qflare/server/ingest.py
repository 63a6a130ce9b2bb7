"""Backpressure on update uploads: at most ``server.max_uploads_in_flight`` are read, opened and stored at once.

An upload beyond the cap is answered at once, before any of its body is read: ``503 server_busy``
(plain JSON, like every refusal made before a request is opened) with a ``Retry-After`` in seconds.
uvicorn discards the unread body and keeps the connection, so a turned-away upload costs the server
its header and the bytes passing through, never a copy of the body; nothing is recorded (no event
row, no nonce: the device re-sends with a fresh envelope, ``docs/protocol.md`` 13.3).

``Retry-After`` is sized so that a fleet larger than what the server ingests spreads its retries
instead of coming back together: the devices turned away within the last retry interval (about the
devices waiting) over the uploads per second the server gets through (the cap over the mean time an
upload holds its slot), between 1 s and ``max_retry_after``. Without it, N waiting devices retrying
every second would each cost the server a 4 MB body to discard per second.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["UPLOAD_PATH", "UploadGate", "UploadGateMiddleware"]

UPLOAD_PATH = re.compile(r"^/v1/device/rounds/[^/]+/update$")
"""The route the gate holds back (``POST``); every other request passes untouched."""

_BUSY_REASON = "server_busy"


class UploadGate:
    """Counts uploads in flight against ``cap`` and sizes the ``Retry-After`` of those turned away.

    Parameters
    ----------
    cap:
        Uploads read, opened and stored at once (each holds a few copies of its body at most).
    max_retry_after:
        The longest ``Retry-After`` given, seconds.
    clock:
        Monotonic seconds (a parameter for tests).
    """

    def __init__(self, cap: int, *, max_retry_after: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self.max_retry_after = max_retry_after
        self.clock = clock
        self.active = 0
        self.peak = 0
        self.admitted = 0
        self.refused = 0
        self._hold = 1.0  # mean seconds an upload holds its slot (exponentially weighted)
        self._window = 1.0  # the last Retry-After given: refusals within it stand for the devices waiting
        self._refusals: deque[float] = deque(maxlen=100_000)
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        """Take a slot if one is free (never waits)."""
        with self._lock:
            if self.active >= self.cap:
                self.refused += 1
                self._refusals.append(self.clock())
                return False
            self.active += 1
            self.admitted += 1
            self.peak = max(self.peak, self.active)
            return True

    def leave(self, held_seconds: float) -> None:
        """Give the slot back; ``held_seconds`` is how long the upload held it."""
        with self._lock:
            self.active -= 1
            self._hold += 0.1 * (max(held_seconds, 0.0) - self._hold)

    def retry_after(self) -> int:
        """Whole seconds a turned-away device should wait (see the module docstring)."""
        with self._lock:
            now = self.clock()
            while self._refusals and self._refusals[0] < now - self._window:
                self._refusals.popleft()
            waiting = max(1, len(self._refusals))
            per_second = self.cap / max(self._hold, 1e-3)
            seconds = min(self.max_retry_after, max(1.0, math.ceil(waiting / per_second)))
            self._window = seconds
            return int(seconds)


class UploadGateMiddleware:
    """ASGI middleware: ``POST`` uploads beyond the gate's cap are answered 503 ``server_busy`` unread."""

    def __init__(self, app: ASGIApp, gate: UploadGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not UPLOAD_PATH.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        gate = self.gate
        if not gate.try_enter():
            await _busy(send, gate.retry_after())
            return
        started = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            gate.leave(time.monotonic() - started)


async def _busy(send: Send, retry_after: int) -> None:
    body = json.dumps({"error": {"reason": _BUSY_REASON, "message": (
        f"the server is ingesting as many uploads as it can; retry in {retry_after} s with a fresh envelope")}},
        separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode())]})
    await send({"type": "http.response.body", "body": body})
