"""The server writes the audit ledger at each fact and serves it (tlog-tiles + JSON proofs)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from qflare.ledger import verify_consistency, verify_inclusion, verify_log
from qflare.ledger.entries import decode_event
from qflare.ledger.merkle import leaf_hash
from qflare.ledger.tiles import root_from_tiles

from .conftest import Harness, make_harness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _events(h: Harness) -> list[str]:
    ledger = h.state.ledger
    assert ledger is not None
    return [decode_event(e).EVENT for e in ledger.store.read_entries(0, ledger.store.size())]


def _round(h: Harness) -> int:
    rid = h.open_round()
    for i, d in enumerate(h.keys):
        r = h.post(d, f"/v1/device/rounds/{rid}/update", h.update_blob(num_examples=10 + i))
        assert r.status_code == 200, r.text
    return rid


def test_a_round_is_logged_checkpointed_and_verifies(harness: Harness) -> None:
    # Execute
    rid = _round(harness)

    # Assert: enrolment x3, round opened, 3 updates, round closed + aggregate, a checkpoint (at 9),
    # and the next round opened.
    assert _events(harness) == ["device_enrolled"] * 3 + ["round_opened"] + ["update_accepted"] * 3 + [
        "round_closed", "aggregate_published", "round_opened"]
    ledger = harness.state.ledger
    assert ledger is not None
    last = decode_event(ledger.store.read_entries(8, 9)[0])
    assert last.round_id == rid  # type: ignore[attr-defined]
    assert [w for _, w in last.participants] == [10.0, 11.0, 12.0]  # type: ignore[attr-defined]
    assert harness.state.repo.latest_model().sha256 == last.model_sha256  # type: ignore[attr-defined, union-attr]
    report = verify_log(ledger.store, ledger.log_key, origin=ledger.origin)
    assert report.ok and report.checkpoints_checked == 1 and report.size == 10


def test_refusals_revocation_and_failed_rounds_are_logged(harness: Harness) -> None:
    rid = harness.open_round()
    bad = harness.post("edge_0", f"/v1/device/rounds/{rid}/update", b"not an update")
    assert bad.status_code >= 400
    r = harness.client.post("/v1/admin/devices/edge_2/revoke", headers={"Authorization": "Bearer admin-token"})
    harness.clock.advance(10_000)
    harness.state.orchestrator.tick()
    events = _events(harness)
    assert "update_refused" in events and "round_failed" in events
    if r.status_code == 200:
        assert "device_revoked" in events
    ledger = harness.state.ledger
    assert ledger is not None
    refused = next(decode_event(e) for e in ledger.store.read_entries(0, ledger.store.size())
                   if decode_event(e).EVENT == "update_refused")
    assert refused.device_id == "edge_0" and refused.round_id == rid  # type: ignore[attr-defined]
    assert verify_log(ledger.store, ledger.log_key).ok


def test_read_api_serves_tiles_entries_and_proofs_that_verify(harness: Harness) -> None:
    _round(harness)
    c = harness.client
    note = c.get("/ledger/checkpoint")
    assert note.status_code == 200
    lines = note.text.split("\n")
    size, root = int(lines[1]), base64.b64decode(lines[2])
    assert size == 9
    assert root_from_tiles(size, lambda p: c.get(f"/ledger/{p}").content) == root
    bundle = c.get("/ledger/tile/entries/000.p/9")
    assert bundle.status_code == 200

    e = c.get("/v1/ledger/entries/4").json()
    assert e["event"]["event"] == "update_accepted"
    lh = leaf_hash(base64.b64decode(e["entry"]))
    p = c.get(f"/v1/ledger/proof/inclusion?leaf_hash={lh.hex()}").json()
    assert p["leaf_index"] == 4 and p["tree_size"] == 9
    verify_inclusion(lh, 4, 9, [bytes.fromhex(x) for x in p["proof"]], root)

    cp = c.get("/v1/ledger/proof/consistency?first=3&second=9").json()
    verify_consistency(3, 9, [bytes.fromhex(x) for x in cp["proof"]], bytes.fromhex(cp["first_root"]), root)
    keys = c.get("/v1/ledger/keys").json()
    assert keys["size"] == 10 and keys["ed25519_vkey"].startswith(keys["origin"] + "+")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/ledger/entries/10", 404),
        ("/v1/ledger/entries/-1", 400),
        ("/v1/ledger/entries/abc", 400),
        ("/v1/ledger/entries/99999999999999999999999", 400),
        ("/v1/ledger/entries/01", 400),
        ("/v1/ledger/proof/inclusion", 400),
        ("/v1/ledger/proof/inclusion?leaf_hash=zz", 400),
        ("/v1/ledger/proof/inclusion?leaf_hash=" + "00" * 32, 404),
        ("/v1/ledger/proof/inclusion?leaf_hash=" + "00" * 32 + "&tree_size=11", 400),
        ("/v1/ledger/proof/inclusion?leaf_hash=" + "00" * 32 + "&tree_size=0", 400),
        ("/v1/ledger/proof/inclusion?leaf_hash=" + "00" * 32 + "&tree_size=x", 400),
        ("/v1/ledger/proof/consistency", 400),
        ("/v1/ledger/proof/consistency?first=0&second=10", 400),
        ("/v1/ledger/proof/consistency?first=5&second=4", 400),
        ("/v1/ledger/proof/consistency?first=5&second=11", 400),
        ("/v1/ledger/proof/consistency?first=1e3", 400),
        ("/v1/ledger/audit?first=x", 400),
        ("/v1/ledger/audit?first=-1", 400),
        ("/v1/ledger/audit?first=01", 400),
        ("/v1/ledger/audit?leaf_hash=zz", 400),
        ("/v1/ledger/audit?" + "&".join(["leaf_hash=" + "00" * 32] * 65), 400),
        ("/ledger/tile/0/000", 404),
        ("/ledger/tile/0/001.p/1", 404),
        ("/ledger/tile/0/000.p/11", 404),
        ("/ledger/tile/0/000.p/0", 400),
        ("/ledger/tile/0/000.p/256", 400),
        ("/ledger/tile/0/1", 400),
        ("/ledger/tile/64/000", 400),
        ("/ledger/tile/entries/000", 404),
        ("/ledger/tile/entries/x000/001", 400),
        ("/ledger/tile/nonsense", 400),
        ("/ledger/tile/", 400),
    ],
)
def test_bad_or_out_of_range_requests_are_400_or_404(harness: Harness, path: str, status: int) -> None:
    _round(harness)
    r = harness.client.get(path)
    assert r.status_code == status, (path, r.status_code, r.text)


def test_a_fresh_server_has_no_checkpoint_yet(tmp_path: Path) -> None:
    for h in make_harness(tmp_path, enroll_devices=False):
        assert h.client.get("/ledger/checkpoint").status_code == 404
        assert h.client.get("/v1/ledger/entries/0").status_code == 404
        assert h.client.get("/v1/ledger/proof/consistency?first=1").status_code == 400


def test_with_an_enclave_the_checkpoints_are_signed_inside_it_and_verify_only_under_its_key(tmp_path: Path) -> None:
    from qflare.crypto.keyfile import read_public_key
    from qflare.ledger import HybridLogKey
    from qflare.server.keys import ServerKeys
    from qflare.server.ledger import LOG_KEY_FILE, EnclaveNoteSigner

    for h in make_harness(tmp_path, enclave=True):
        # Execute: a simulate-style round through the enclave
        _round(h)

        # Assert
        ledger, enclave = h.state.ledger, h.state.enclave
        assert ledger is not None and enclave is not None
        assert isinstance(ledger.signer, EnclaveNoteSigner)
        enclave_key = enclave.public_keys().signing
        expected = HybridLogKey.from_verify_key(ledger.origin, enclave_key)
        assert ledger.log_key.verifier_keys() == expected.verifier_keys()
        report = verify_log(ledger.store, ledger.log_key, origin=ledger.origin)
        assert report.ok and report.checkpoints_checked >= 1
        host = ServerKeys.load_or_create(h.state.config.server.key_dir).signing.public_key()
        assert not verify_log(ledger.store, HybridLogKey.from_verify_key(ledger.origin, host), origin=ledger.origin).ok
        # The pinned key file and the published keys are the enclave's.
        key_dir = Path(h.state.config.server.key_dir)
        assert read_public_key(key_dir / LOG_KEY_FILE).to_bytes() == enclave_key.to_bytes()  # type: ignore[union-attr]
        keys = h.client.get("/v1/ledger/keys").json()
        assert (keys["ed25519_vkey"], keys["mldsa65_vkey"]) == ledger.log_key.verifier_keys()


def test_ledger_verify_url_mirrors_the_served_log_and_names_a_forged_entry(harness: Harness) -> None:
    import os
    import subprocess
    import sys

    from qflare.ledger.entries import UpdateAccepted
    from qflare.server.ledger import LOG_KEY_FILE

    from .live import serve

    # Prepare: one round, so the log holds signed update and aggregate entries and a checkpoint
    rid = harness.open_round()
    for d in harness.keys:
        assert harness.post(d, f"/v1/device/rounds/{rid}/update", harness.update_blob()).status_code == 200
    key = str(Path(harness.state.config.server.key_dir) / LOG_KEY_FILE)
    ledger = harness.state.ledger
    assert ledger is not None

    def verify(port: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "qflare", "ledger", "verify", "--url",
                               f"http://127.0.0.1:{port}", "--key", key], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "COLUMNS": "200"})

    with serve(harness.client.app) as port:  # type: ignore[arg-type]
        # Execute / Assert: the served log (entry bundles, tiles, checkpoints) verifies under the pinned key
        good = verify(port)
        assert good.returncode == 0, good.stdout + good.stderr
        assert f"ok {ledger.log.size()} entries (4 update/aggregate entries signed by the log key)" in good.stdout

        # Execute / Assert: a host that appends an acceptance of its own (unsigned) is named
        ledger.record(UpdateAccepted("edge_9", rid, "cd" * 32, 60000, 0.0, "accepted", 0))
        ledger.checkpoint()
        bad = verify(port)
        assert bad.returncode == 1
        assert f"first bad: entry {ledger.log.size() - 1} (unsigned_entry" in bad.stdout


def test_the_audit_route_answers_the_checkpoint_and_the_same_proofs_as_the_three_routes(harness: Harness) -> None:
    # Prepare: two rounds, so the log has grown past a first checkpoint
    _round(harness)
    ledger = harness.state.ledger
    assert ledger is not None
    first = ledger.store.latest_checkpoint()
    assert first is not None
    _round(harness)
    c = harness.client
    size = ledger.store.latest_checkpoint().size  # type: ignore[union-attr]
    lh = leaf_hash(ledger.store.read_entries(4, 5)[0])

    # Execute
    r = c.get("/v1/ledger/audit", params=[("first", first.size), ("leaf_hash", lh.hex()),
                                           ("leaf_hash", "00" * 32)])

    # Assert: what the three routes answer, for the tree of the checkpoint it carries
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["checkpoint"].encode() == c.get("/ledger/checkpoint").content and body["tree_size"] == size
    cons = c.get(f"/v1/ledger/proof/consistency?first={first.size}&second={size}").json()
    assert body["consistency"] == {"first": first.size, "second": size, "proof": cons["proof"]}
    inc = c.get(f"/v1/ledger/proof/inclusion?leaf_hash={lh.hex()}&tree_size={size}").json()
    assert body["inclusion"] == [{"leaf_hash": lh.hex(), "leaf_index": 4, "proof": inc["proof"]},
                                 {"leaf_hash": "00" * 32, "leaf_index": None, "proof": []}]
    # No consistency proof where none is needed: first 0 (nothing verified yet), first = size, first > size
    for f in (0, size, size + 5):
        assert c.get(f"/v1/ledger/audit?first={f}").json()["consistency"] is None


def test_the_audit_route_without_a_checkpoint_is_404_no_checkpoint(tmp_path: Path) -> None:
    for h in make_harness(tmp_path, enroll_devices=False):
        r = h.client.get("/v1/ledger/audit")
        assert r.status_code == 404 and r.json()["error"]["reason"] == "no_checkpoint"
