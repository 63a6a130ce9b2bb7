"""The application as a whole: OpenAPI docs, health, and a full round on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from qflare.server.app import build_state, create_app
from tests.server.conftest import ADMIN, FakeClock, Harness, config_for, enroll
from tests.server.pg import PG_URL, pg_available


def test_openapi_docs_list_every_route(harness: Harness) -> None:
    assert harness.client.get("/docs").status_code == 200
    paths = set(harness.client.get("/openapi.json").json()["paths"])
    assert {"/v1/device/task", "/v1/device/heartbeat", "/v1/device/model/{version}",
            "/v1/device/rounds/{round_id}/update", "/v1/admin/devices", "/v1/admin/status", "/v1/enroll",
            "/v1/server/keys", "/healthz"} <= paths
    assert "/bench/bare" not in paths


def test_health_and_server_keys_are_public(harness: Harness) -> None:
    assert harness.client.get("/healthz").json()["status"] == "ok"
    keys = harness.client.get("/v1/server/keys").json()
    assert keys["kem_fingerprint"].count(":") == 7 and keys["timestamp_window_seconds"] == 120


@pytest.fixture
def pg_harness(tmp_path: Path) -> Iterator[Harness]:
    if not pg_available():
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    schema = f"qflare_app_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    cfg = config_for(tmp_path)
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(
        update={"db_url": f"{PG_URL}?options=-csearch_path%3D{schema}"})})
    clock = FakeClock()
    state = build_state(cfg, admin_token=ADMIN, clock=clock)
    from tests.server.conftest import _KEYS

    keys = {f"edge_{i}": _KEYS[i] for i in range(3)}
    try:
        with TestClient(create_app(state, run_ticker=False)) as client:
            for d, k in keys.items():
                enroll(client, d, k)
            yield Harness(client=client, state=state, clock=clock, keys=keys)
    finally:
        state.repo.close()
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.mark.postgres
def test_a_full_round_on_postgresql(pg_harness: Harness) -> None:
    h = pg_harness
    rid = h.open_round()
    for d in ("edge_0", "edge_1", "edge_2"):
        assert h.post(d, f"/v1/device/rounds/{rid}/update", h.update_blob()).status_code == 200
    rnd = h.state.repo.get_round(rid)
    assert rnd is not None and rnd.status == "aggregated" and rnd.new_version == 1
    dup = h.post("edge_0", f"/v1/device/rounds/{rid}/update", h.update_blob())
    assert dup.status_code == 409
    envelope, opener = h.seal("edge_1", "/v1/device/task")
    assert h.send("/v1/device/task", envelope, opener).status_code == 200
    assert h.send("/v1/device/task", envelope).status_code == 409  # the nonce store works on PostgreSQL too
