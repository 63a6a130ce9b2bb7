"""Issue 12: schemathesis against the app's own /openapi.json (in-process ASGI): no 5xx on any route.

The budget is small in ``make test``; ``make fuzz`` raises it with QFLARE_FUZZ_API_EXAMPLES."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from qflare.server.app import build_state, create_app
from tests.server.conftest import ADMIN, FakeClock, config_for

EXAMPLES = int(os.environ.get("QFLARE_FUZZ_API_EXAMPLES", "5"))

_dir = Path(tempfile.mkdtemp(prefix="qflare-fuzz-"))
_state = build_state(config_for(_dir), admin_token=ADMIN, clock=FakeClock())
_state.orchestrator.bootstrap()
_app = create_app(_state, run_ticker=False)
# Rate limits would turn a fuzzer's flood into 429s and hide the routes behind them.
_app.state.rate_limits = type("Off", (), {"operator_failures": None, "enrollment": None, "device_refusals": None,
                                          "device_requests": None})()
# Envelopes are bytes to the schema: random ones, and ones that start like an envelope.
schemathesis.openapi.media_type("application/vnd.qflare.envelope",
                                st.binary(max_size=4096) | st.binary(max_size=4096).map(lambda b: b"QFE1" + b))
schema = schemathesis.openapi.from_asgi("/openapi.json", _app)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_route_answers_5xx(case: schemathesis.Case) -> None:
    for headers in ({"Authorization": f"Bearer {ADMIN}"}, {}):
        response = case.call(headers=headers)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
