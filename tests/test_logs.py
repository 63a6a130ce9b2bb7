"""``--log-format json``: one JSON object per line, with the request id and the device id."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from qflare.errors import ConfigError
from qflare.logs import JsonFormatter, bind_device, bind_request, configure_logging
from tests.server.conftest import make_harness


def test_a_record_is_one_json_line_with_the_bound_ids() -> None:
    bind_request("req-1")
    bind_device("edge_07")
    record = logging.LogRecord("qflare.x", logging.INFO, __file__, 1, "two\nlines %s", ("here",), None)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["message"] == "two\nlines here" and obj["level"] == "info" and obj["logger"] == "qflare.x"
    assert obj["request_id"] == "req-1" and obj["device_id"] == "edge_07"
    bind_request(None)
    bind_device(None)


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ConfigError, match="--log-format"):
        configure_logging("info", "xml")


def test_server_lines_carry_the_callers_request_id_and_the_device(tmp_path: Path) -> None:
    # Prepare: capture the server's log as JSON.
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    server_log = logging.getLogger("qflare")
    server_log.addHandler(handler)
    old_level = server_log.level
    server_log.setLevel(logging.INFO)
    try:
        for h in make_harness(tmp_path):
            rid = h.open_round()
            devices = list(h.keys)
            for device in devices[:-1]:
                assert h.post(device, f"/v1/device/rounds/{rid}/update", h.update_blob()).status_code == 200
            last = devices[-1]
            path = f"/v1/device/rounds/{rid}/update"
            envelope, _ = h.seal(last, path, h.update_blob(), round_id=rid)
            # Execute: the last update closes the round, which logs inside that request.
            resp = h.client.post(path, content=envelope, headers={"X-Request-ID": "ops-trace-42"})
            assert resp.status_code == 200 and resp.headers["X-Request-ID"] == "ops-trace-42"
            assert len(h.client.get("/healthz").headers["X-Request-ID"]) == 16  # fresh when none sent
    finally:
        server_log.removeHandler(handler)
        server_log.setLevel(old_level)
    # Assert
    lines = [json.loads(ln) for ln in buf.getvalue().splitlines()]
    closing = [ln for ln in lines if "aggregated" in ln["message"]]
    assert closing, lines
    assert closing[0]["request_id"] == "ops-trace-42" and closing[0]["device_id"] == last


@pytest.fixture
def root_logging():  # type: ignore[no-untyped-def]
    """configure_logging replaces the root handlers: put them (and the levels it sets) back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {n: logging.getLogger(n).level for n in ("alembic", "httpx")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("warning", False), ("debug", True)])
def test_alembic_is_quiet_at_start_unless_debug(tmp_path: Path, capsys: pytest.CaptureFixture[str], root_logging: None,
                                                level: str, shown: bool) -> None:
    from qflare.server.storage import Repository

    # Execute: as qflare server and each worker do, logging first, then the database (a new one: every migration)
    configure_logging(level, "text")
    Repository(f"sqlite:///{tmp_path / 'new.db'}").close()
    # Assert
    err = capsys.readouterr().err
    assert ("alembic" in err and "Running upgrade" in err) is shown, err


def test_worker_lines_name_their_process(root_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    configure_logging("info", "json", process_ids=True)
    logging.getLogger("qflare.test").info("hello")
    obj = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert obj["message"] == "hello" and obj["pid"] == os.getpid()


def test_an_unknown_log_level_is_refused() -> None:
    with pytest.raises(ConfigError, match="--log-level: 'loud' is not one of debug, info, warning"):
        configure_logging("loud", "text")
