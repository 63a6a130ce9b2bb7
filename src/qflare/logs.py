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

__all__ = ["LogFormat", "bind_device", "bind_request", "check_log_options", "configure_logging", "device_id",
           "request_id"]

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
    """One JSON object per record, on one line (newlines in messages are escaped by JSON).

    ``process_ids`` adds ``"pid"`` (``qflare server --workers``: which worker wrote the line).
    """

    def __init__(self, *, process_ids: bool = False) -> None:
        super().__init__()
        self.process_ids = process_ids

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": _request_id.get(),
            "device_id": _device_id.get(),
        }
        if self.process_ids:
            out["pid"] = record.process
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
LEVELS = ("debug", "info", "warning", "error", "critical")


def check_log_options(level: str, fmt: str) -> None:
    """:class:`~qflare.errors.ConfigError` naming ``--log-level`` or ``--log-format`` unless both are known."""
    from qflare.errors import ConfigError

    if fmt not in ("text", "json"):
        raise ConfigError(f"--log-format: {fmt!r} is not one of text, json", reason="bad_option")
    if level.lower() not in LEVELS:
        raise ConfigError(f"--log-level: {level!r} is not one of {', '.join(LEVELS)}", reason="bad_option")


def configure_logging(level: str, fmt: str = "text", *, process_ids: bool = False) -> None:
    """Set up the root logger once, for a command's whole process (``process_ids``: one of several workers).

    Alembic's INFO lines at every start ("Context impl SQLiteImpl.", "Will assume non-transactional DDL.")
    tell an operator nothing: they are shown at ``debug`` only.
    """
    check_log_options(level, fmt)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(process_ids=process_ids) if fmt == "json"
                         else logging.Formatter(WORKER_TEXT_FORMAT if process_ids else TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the node's own log
    logging.getLogger("alembic").setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)
