"""Issue 12: a client that disconnects mid-upload costs the server one log line, not a traceback."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from qflare.server.app import build_state, create_app
from tests.server.conftest import ADMIN, FakeClock, config_for
from tests.server.live import connect, serve


def test_disconnect_mid_upload_logs_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare
    state = build_state(config_for(tmp_path), admin_token=ADMIN, clock=FakeClock())
    app = create_app(state, run_ticker=False)
    caplog.set_level(logging.INFO)
    with serve(app) as port:
        # Execute: announce 100 kB, send 10 bytes, hang up.
        s = connect(port)
        s.sendall(b"POST /v1/device/rounds/1/update HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/vnd.qflare.envelope\r\nContent-Length: 100000\r\n\r\n0123456789")
        time.sleep(0.3)
        s.close()
        time.sleep(0.5)
    state.close()

    # Assert
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    lines = [r for r in caplog.records if "disconnect" in r.getMessage().lower()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert "/v1/device/rounds/1/update" in lines[0].getMessage()
