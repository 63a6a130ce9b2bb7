"""Issue 12, crash matrix: the server SIGKILLed at a step of a round (after the last update's commit,
during aggregation) and restarted. The round completes promptly (not at its deadline), every accepted
update is counted once, and the model equals a FedAvg computed here, independently."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from qflare.crypto.keyfile import read_public_key
from qflare.edge.client import DeviceClient, ServerUnavailable
from qflare.fl.serialize import dump_arrays, load_arrays
from qflare.server.faults import ENV
from qflare.sim.runner import SimulationConfig, build_global_config, free_port, start_server

pytestmark = pytest.mark.slow

DEVICES = ("edge_01", "edge_02", "edge_03")
SCALES = {"edge_01": (1.0, 10), "edge_02": (3.0, 20), "edge_03": (0.5, 30)}  # (scale, num_examples)
DEADLINE = 120.0


def _wait_train(c: DeviceClient) -> dict:  # type: ignore[type-arg]
    for _ in range(150):
        t = c.task()
        if t["status"] == "train":
            return t
        time.sleep(0.2)
    raise AssertionError("no round opened")


@pytest.mark.parametrize("crash_at", ["after_commit@3", "before_ledger_append@3", "during_aggregation",
                                      "during_model_write"])
def test_server_killed_at_a_step_of_a_round_completes_it_on_restart(tmp_path: Path, crash_at: str) -> None:
    # Prepare: one round of three devices, in-process FedAvg, a deadline far away.
    sim = SimulationConfig(task="digits", clients=3, rounds=1, deadline_seconds=DEADLINE, enclave="none",
                           aggregator="fedavg", min_quorum=3)
    config = build_global_config(sim, tmp_path, free_port())
    sent: dict[str, tuple[dict[str, np.ndarray], int]] = {}
    with start_server(config, tmp_path, extra_env={ENV: crash_at}) as fed:
        keys = {d: fed.enroll(d) for d in DEVICES}
        pub = read_public_key(fed.server_key_file())
        clients = {d: DeviceClient(fed.url, d, k, pub, timeout=30) for d, k in keys.items()}
        for c in clients.values():
            c.heartbeat()
        task = _wait_train(clients["edge_01"])
        base, _ = load_arrays(clients["edge_01"].download_model(task["model_version"], task["model_sha256"]))
        # Execute: all three upload; the third upload's request dies with the server.
        for d, c in clients.items():
            scale, n = SCALES[d]
            arrays = {k: v * scale for k, v in base.items()}
            sent[d] = (arrays, n)
            blob = dump_arrays(arrays, {"num_examples": str(n), "train_loss": "0.5"})
            try:
                c.upload_update(task["round_id"], blob)
            except ServerUnavailable:
                assert d == "edge_03"
        assert fed.server.wait(timeout=30) != 0  # it was killed, not stopped
        for c in clients.values():
            c.close()

    # Restart without the fault; time how long the round takes to close.
    started = time.monotonic()
    with start_server(config, tmp_path) as fed:
        with httpx.Client(base_url=fed.url, headers={"Authorization": f"Bearer {fed.admin_token}"}) as admin:
            for _ in range(100):
                rnd = admin.get("/v1/admin/rounds").json()[0]
                if rnd["status"] != "open":
                    break
                time.sleep(0.2)
        status = fed.status()
        blob = fed.admin().get("/v1/admin/models").json()
    waited = time.monotonic() - started

    # Assert: closed promptly, three updates counted once, the model is the weighted mean.
    assert rnd["status"] == "aggregated", rnd
    assert waited < 30, waited  # promptly, not at the deadline
    assert status["accepted_updates"] == 3 and status["latest_metrics"]["num_updates"] == 3
    assert [m["version"] for m in blob] and max(m["version"] for m in blob) == 1
    import sqlite3

    row = sqlite3.connect(tmp_path / "qflare.db").execute(
        "select blob from model_versions where version = 1").fetchone()
    new, _ = load_arrays(row[0])
    total = sum(n for _, n in sent.values())
    for name in base:
        expected = sum(a[name].astype(np.float64) * n for a, n in sent.values()) / total
        np.testing.assert_allclose(new[name], expected, rtol=1e-5, atol=1e-6)
    # The audit log: every accepted update and the aggregate logged exactly once, and the log verifies.
    _assert_ledger(tmp_path, config.server.key_dir, [task["round_id"]], DEVICES)


def _assert_ledger(tmp_path: Path, key_dir: str, round_ids: list[int], devices: tuple[str, ...]) -> None:
    """Every device's update of each round logged exactly once, each round's aggregate once; the log verifies."""
    from qflare.ledger import HybridLogKey, verify_log
    from qflare.ledger.entries import AggregatePublished, UpdateAccepted, decode_event
    from qflare.server.ledger import DEFAULT_ORIGIN, LOG_KEY_FILE
    from qflare.server.storage.ledger_store import SqlLogStore

    store = SqlLogStore(f"sqlite:///{tmp_path / 'qflare.db'}")
    try:
        events = [decode_event(e) for e in store.read_entries(0, store.size())]
        vk = read_public_key(Path(key_dir) / LOG_KEY_FILE)
        key = HybridLogKey.from_verify_key(DEFAULT_ORIGIN, vk)  # type: ignore[arg-type]
        report = verify_log(store, key, origin=DEFAULT_ORIGIN, entry_key=key.verify_key())
    finally:
        store.close()
    for round_id in round_ids:
        accepted = sorted(e.device_id for e in events if isinstance(e, UpdateAccepted) and e.round_id == round_id)
        assert accepted == sorted(devices), (round_id, accepted)
    assert [e.round_id for e in events if isinstance(e, AggregatePublished)] == round_ids
    assert report.ok, report.problems
