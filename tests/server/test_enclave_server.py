"""The server with its enclave: decryption, validation, aggregation and signing happen in the enclave
process; devices attest it; it can die mid-round and the round resumes from sealed state."""

from __future__ import annotations

import base64
import gc
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from qflare.config import AttestationConfig, DeviceConfig
from qflare.crypto.keyfile import serialize_public_key
from qflare.edge.client import DeviceClient
from qflare.edge.node import EdgeNode
from qflare.enclave.measurement import measure, signer_id
from qflare.enclave.statements import RoundTask, verify_model_signature, verify_task_signature
from qflare.errors import AttestationError, InvalidSignature
from qflare.fl.serialize import load_arrays
from qflare.server.app import enclave_config_for
from tests.enclave.test_isolation import find_in_memory, find_in_objects, run_python
from tests.server.conftest import ADMIN, Harness, make_harness

pytestmark = pytest.mark.slow
UPDATE = "/v1/device/rounds/{}/update"


@pytest.fixture
def eh(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield from make_harness(tmp_path, enclave=True)


def _policy(h: Harness, **overrides: object) -> tuple[AttestationConfig, object]:
    from qflare.enclave.launcher import load_or_create_signing_key, read_trust_root

    work = Path(h.state.config.enclave.work_dir)
    signer = load_or_create_signing_key(work / "signer-dev-key.json").public_key().to_bytes()
    fields = {"expected_measurement": measure(enclave_config_for(h.state.config)).hex,
              "expected_signer": signer_id(signer).hex(), "allow_simulated": True, **overrides}
    return AttestationConfig.model_validate(fields), read_trust_root(work / "platform")


def _device_client(h: Harness, device_id: str) -> DeviceClient:
    # The edge client speaking to the in-process app through the test client's transport.
    return DeviceClient("http://testserver", device_id, h.keys[device_id], None,
                        transport=h.client._transport, clock=h.clock)  # type: ignore[attr-defined]


def test_a_round_through_the_enclave_is_signed_and_verifiable(eh: Harness) -> None:
    h = eh
    policy, root = _policy(h)
    client = _device_client(h, "edge_0")
    client.require_attestation(policy, root)
    rid = h.open_round()
    task = client.task()
    enclave = client.enclave
    assert enclave is not None and enclave.simulated
    assert enclave.kem == h.state.gateway.opener.kem_public_key()
    verify_task_signature(RoundTask(rid, task["model_sha256"], task["deadline_at"]),
                          base64.b64decode(task["task_signature"]), enclave_key=enclave.signing)
    for d in ("edge_0", "edge_1", "edge_2"):
        assert h.post(d, UPDATE.format(rid), h.update_blob(scale=0.5)).status_code == 200
    model = h.state.repo.get_model(1)
    assert model is not None and model.signature is not None
    blob = h.state.repo.model_blob(1)
    verify_model_signature(blob, model.signature, enclave_key=enclave.signing, round_id=rid)
    with pytest.raises(InvalidSignature):
        verify_model_signature(blob[:-1] + bytes([blob[-1] ^ 1]), model.signature, enclave_key=enclave.signing,
                               round_id=rid)
    new, _ = load_arrays(blob, h.state.orchestrator.spec)
    for name, arr in h.global_arrays().items():
        np.testing.assert_allclose(new[name], arr * 0.5, rtol=1e-5, atol=1e-6)
    client.close()


@pytest.mark.parametrize(("override", "reason"), [
    ({"expected_measurement": "ab" * 32}, "wrong_measurement"),
    ({"expected_signer": "cd" * 32}, "wrong_signer"),
    ({"allow_simulated": False}, "simulated_not_allowed"),
    ({"min_svn": 9}, "svn_too_low"),
])
def test_a_device_refuses_an_enclave_its_policy_does_not_accept(eh: Harness, override: dict[str, object],
                                                               reason: str) -> None:
    policy, root = _policy(eh, **override)
    client = _device_client(eh, "edge_0")
    client.require_attestation(policy, root)
    with pytest.raises(AttestationError) as info:
        client.task()  # nothing is sent before the quote verifies
    assert info.value.reason == reason
    assert eh.state.repo.count_nonces() == 0
    client.close()


def test_an_edge_node_refuses_a_task_whose_signature_does_not_verify(eh: Harness) -> None:
    policy, root = _policy(eh)
    client = _device_client(eh, "edge_0")
    client.require_attestation(policy, root)
    rid = eh.open_round()
    task = client.task()
    node = EdgeNode(DeviceConfig(device_id="edge_0", identity_key_file="k", server_key_fingerprint="x"), client)
    forged = {**task, "deadline_at": task["deadline_at"] + 3600}  # a host extending the deadline
    with pytest.raises(InvalidSignature):
        node.train_round(forged)
    unsigned = {**task, "task_signature": None}
    with pytest.raises(AttestationError) as info:
        node.train_round(unsigned)
    assert info.value.reason == "unsigned_task"
    assert len(node.train_round(task)) > 0 and rid == task["round_id"]
    client.close()


def test_the_enclave_dies_mid_round_503_then_the_round_resumes_from_sealed_state(eh: Harness) -> None:
    h = eh
    rid = h.open_round()
    assert h.post("edge_0", UPDATE.format(rid), h.update_blob(num_examples=10, scale=1.0)).status_code == 200
    enclave = h.state.enclave
    assert enclave is not None
    pid = enclave.enclave.pid
    assert pid is not None

    # The enclave dies while it handles edge_1's upload: freeze it, send, kill it.
    os.kill(pid, signal.SIGSTOP)
    replies: list[object] = []
    sender = threading.Thread(target=lambda: replies.append(
        h.post("edge_1", UPDATE.format(rid), h.update_blob(num_examples=10, scale=3.0))))
    sender.start()
    time.sleep(1.5)  # the request passes the gateway and blocks on the frozen enclave
    os.kill(pid, signal.SIGKILL)
    sender.join(timeout=60)
    down = replies[0]
    assert down.status_code == 503, down.text  # type: ignore[attr-defined]
    assert json.loads(down.raw)["error"]["reason"] == "enclave_unavailable"  # type: ignore[attr-defined]
    assert h.state.repo.count_updates() == 1  # nothing recorded for the failed attempt

    # The device retries with a fresh envelope: a new enclave process resumes the round from sealed state.
    again = h.post("edge_1", UPDATE.format(rid), h.update_blob(num_examples=10, scale=3.0))
    assert again.status_code == 200, again.text
    assert enclave.enclave.pid not in (None, pid) and enclave.enclave.restarts == 1
    # A death between requests is repaired on the next call without the device noticing.
    os.kill(enclave.enclave.pid, signal.SIGKILL)  # type: ignore[arg-type]
    for _ in range(100):  # until the host can see it is gone (a kill is not instantaneous)
        if not enclave.enclave.running:
            break
        time.sleep(0.05)
    assert h.post("edge_2", UPDATE.format(rid), h.update_blob(num_examples=20, scale=5.0)).status_code == 200
    assert enclave.enclave.restarts == 2

    rnd = h.state.repo.get_round(rid)
    assert rnd is not None and rnd.status == "aggregated" and rnd.metrics["num_updates"] == 3  # type: ignore[index]
    new, _ = load_arrays(h.state.repo.model_blob(1), h.state.orchestrator.spec)
    for name, arr in h.global_arrays().items():
        np.testing.assert_allclose(new[name], arr * (10 * 1 + 10 * 3 + 20 * 5) / 40, rtol=1e-5, atol=1e-6)


def test_the_server_process_never_holds_an_enclave_private_key_or_a_plaintext_update(tmp_path: Path) -> None:
    for h in make_harness(tmp_path, keys={}, enclave=True, min_devices=2, min_quorum=2, total=1):
        # Prepare: two devices in another process seal a heartbeat and an update each for the enclave.
        out = tmp_path / "device"
        out.mkdir()
        kem = base64.b64encode(h.state.gateway.opener.kem_public_key().to_bytes()).decode()
        request = {"kem_public_key": kem, "now": h.clock(), "out_dir": str(out), "devices": 2}
        made = json.loads(run_python(None, module="tests.server._digits_device", stdin=json.dumps(request)))
        from qflare.crypto import VerifyKey

        for d in made["devices"]:
            pub = VerifyKey.from_bytes(base64.b64decode(d["public_key"]))
            r = h.client.post("/v1/admin/devices", headers={"Authorization": f"Bearer {ADMIN}"},
                              json={"device_id": d["device_id"], "public_key": serialize_public_key(pub).decode()})
            assert r.status_code == 201

        # Execute: the whole round over HTTP.
        for d in made["devices"]:
            assert h.client.post("/v1/device/heartbeat", content=Path(d["heartbeat"]).read_bytes()).status_code == 200
        h.state.orchestrator.tick()
        for d in made["devices"]:
            resp = h.client.post(UPDATE.format(1), content=Path(d["update"]).read_bytes())
            assert resp.status_code == 200, resp.text
        assert h.state.repo.get_round(1).status == "aggregated"  # type: ignore[union-attr]

        # The enclave's key seeds, read from its sealed file by another process.
        ident = h.state.enclave.identity()  # type: ignore[union-attr]
        seeds = run_python(
            "from qflare.enclave.testing import unsafe_read_sealed_key_seeds as r; "
            f"k, s = r({h.state.config.enclave.work_dir!r}, bytes.fromhex({ident.measurement.hex()!r})); "
            "print(k.hex(), s.hex())"
        ).split()
        del resp, r
        gc.collect()
        needles = [bytes.fromhex(x) for x in seeds + made["probes"]]

        # Assert: nothing the server side can reach holds them: app state, client, every gc object,
        # and (Linux) every live writable page of this process.
        assert find_in_objects(needles, [h.state, h.client.app]) == []
        if sys.platform.startswith("linux"):
            assert find_in_memory(needles) == []
        planted = [bytearray(needles[0]), np.frombuffer(needles[3], dtype=np.uint8).copy()]
        assert find_in_objects(needles, [planted]) == [0, 3]


def test_attestation_endpoint_without_an_enclave_is_a_clear_404(harness: Harness) -> None:
    r = harness.client.get("/v1/enclave/attestation", params={"nonce": "00" * 32})
    assert r.status_code == 404 and r.json()["error"]["reason"] == "no_enclave"


def test_the_enclave_writes_and_signs_the_update_and_aggregate_entries(eh: Harness) -> None:
    from qflare.ledger.entries import AggregatePublished, UpdateAccepted, decode_event, verify_entry
    from qflare.ledger.log import verify_log

    # Prepare
    h = eh
    rid = h.open_round()
    for d in ("edge_0", "edge_1", "edge_2"):
        assert h.post(d, UPDATE.format(rid), h.update_blob(scale=0.5)).status_code == 200
    audit, enclave = h.state.ledger, h.state.enclave
    assert audit is not None and enclave is not None
    enclave_key = enclave.public_keys().signing
    log_key = audit.log_key

    # Execute: what the host appended, entry by entry
    events = [decode_event(audit.log.entry(i)) for i in range(audit.log.size())]
    produced = [e for e in events if isinstance(e, UpdateAccepted | AggregatePublished)]

    # Assert: every one carries the enclave's signature (the log key is the enclave's)
    assert log_key.verify_key() == enclave_key
    assert sorted(e.device_id for e in produced if isinstance(e, UpdateAccepted)) == ["edge_0", "edge_1", "edge_2"]
    assert all(e.verdict == "accepted" and e.update_norm > 0 for e in produced if isinstance(e, UpdateAccepted))
    (agg,) = [e for e in produced if isinstance(e, AggregatePublished)]
    model = h.state.repo.get_model(1)
    assert model is not None and agg.model_sha256 == model.sha256
    assert sorted(d for d, _ in agg.participants) == ["edge_0", "edge_1", "edge_2"]
    for e in produced:
        verify_entry(e, enclave_key)
    report = verify_log(audit.store, log_key, origin=audit.origin, entry_key=log_key.verify_key())
    assert report.ok, report.problems
    assert report.signed_entries == 4

    # Execute / Assert: a compromised host that logs an aggregate itself cannot sign it with the log key
    audit.round_closed(rid + 7, "cd" * 32, "fedavg", [("edge_9", 10_000)])
    report = verify_log(audit.store, log_key, origin=audit.origin, entry_key=log_key.verify_key())
    assert report.reasons == ["unsigned_entry"]
    assert report.first_bad_index == audit.log.size() - 1


def test_a_server_whose_ledger_database_was_rolled_back_refuses_to_start(tmp_path: Path) -> None:
    import shutil

    from qflare.errors import ConfigError
    from qflare.server.app import build_state
    from tests.server.conftest import config_for

    # Prepare: a round through the enclave (it signs a checkpoint), then the database is copied back to
    # its state before the round (the enclave's sealed state stays)
    config = config_for(tmp_path, enclave=True)
    db = tmp_path / "qflare.db"
    for h in make_harness(tmp_path, enclave=True):
        assert h.state.ledger is not None
        h.state.ledger.checkpoint()
        shutil.copy(db, tmp_path / "before.db")
        rid = h.open_round()
        for d in ("edge_0", "edge_1", "edge_2"):
            assert h.post(d, UPDATE.format(rid), h.update_blob(scale=0.5)).status_code == 200
        assert h.state.enclave is not None
        signed = h.state.enclave.ledger_head()[0]
        assert signed > 0 and signed == h.state.ledger.store.latest_checkpoint().size  # type: ignore[union-attr]
    shutil.copy(tmp_path / "before.db", db)

    # Execute
    with pytest.raises(ConfigError) as info:
        build_state(config, admin_token=ADMIN)

    # Assert: a clear reason, naming what to do
    assert info.value.reason == "ledger_rolled_back"
    assert "rolled back" in info.value.message and "Restore the database" in info.value.message


def test_the_enclave_refuses_an_update_above_the_devices_enrolled_cap_itself(eh: Harness) -> None:
    from qflare.crypto import SigningKey
    from qflare.crypto.keyfile import serialize_public_key

    # Prepare: edge_3 enrolled for at most 50 examples; the host's own check is bypassed (a hostile host)
    h = eh
    key = SigningKey.generate()
    r = h.client.post("/v1/admin/devices", headers={"Authorization": f"Bearer {ADMIN}"}, json={
        "device_id": "edge_3", "public_key": serialize_public_key(key.public_key()).decode(), "max_examples": 50})
    assert r.status_code == 201
    h.keys["edge_3"] = key
    rid = h.open_round()
    h.state.repo.get_device = lambda d, real=h.state.repo.get_device: (  # type: ignore[method-assign]
        real(d).__class__(**{**real(d).__dict__, "max_examples": None}) if real(d) is not None else None)

    # Execute
    refused = h.post("edge_3", UPDATE.format(rid), h.update_blob(num_examples=10**7))

    # Assert: the enclave's registry (operator-signed) carries the cap and refuses the claim
    assert refused.status_code == 400 and json.loads(refused.text)["error"]["reason"] == "num_examples_above_cap"
