"""Logging for ``qflare server`` and ``qflare edge``: text (default) or one JSON object per line.

``--log-format json`` writes each record as ``{"ts", "level", "logger", "message", "request_id",
"device_id", ...}``; the request id and device id come from context variables that the server binds per
request (``X-Request-ID`` if the caller sent one, else a fresh id, echoed in the answer) and once the
device is known, and that an edge node binds to its own id.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Literal

__all__ = ["LogFormat", "bind_device", "bind_request", "configure_logging", "device_id", "request_id"]

LogFormat = Literal["text", "json"]

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("qflare_request_id", default=None)
_device_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("qflare_device_id", default=None)


def bind_request(value: str | None) -> contextvars.Token[str | None]:
    return _request_id.set(value)


def bind_device(value: str | None) -> contextvars.Token[str | None]:
    return _device_id.set(value)


def request_id() -> str | None:
    return _request_id.get()


def device_id() -> str | None:
    return _device_id.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": _request_id.get(),
            "device_id": _device_id.get(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, fmt: str = "text") -> None:
    """Set up the root logger once, for a command's whole process."""
    if fmt not in ("text", "json"):
        from qflare.errors import ConfigError

        raise ConfigError(f"--log-format: {fmt!r} is not one of text, json", reason="bad_option")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the node's own log
