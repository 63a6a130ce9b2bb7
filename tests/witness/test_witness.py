"""`qflare witness`: cosigns a consistent log, refuses rollback and fork; devices require k of n witnesses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from qflare.cli.app import app as cli
from qflare.crypto.secret_access import TOKEN
from qflare.edge.audit import HttpLedgerReader, LedgerAuditor
from qflare.errors import InvalidInput, LedgerIntegrityError
from qflare.ledger import (
    CosignatureSigner,
    HybridNoteSigner,
    MemoryLogStore,
    TransparencyLog,
    WitnessPolicy,
    WitnessQuorumError,
)
from qflare.ledger.witness import format_add_checkpoint_request
from qflare.server.keys import ServerKeys
from qflare.witness import Witness, generate_witness_key, load_witness_key
from qflare.witness.poller import poll_once
from qflare.witness.service import create_witness_app

from ..server.conftest import Harness, make_harness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _round(h: Harness) -> None:
    rid = h.open_round()
    for i, d in enumerate(h.keys):
        assert h.post(d, f"/v1/device/rounds/{rid}/update", h.update_blob(num_examples=10 + i)).status_code == 200


def _witness(h: Harness, name: str, state_file: Path | None = None, seed: bytes | None = None) -> Witness:
    ledger = h.state.ledger
    assert ledger is not None
    signer = CosignatureSigner(name, seed or name.encode().ljust(32, b"\0")[:32], TOKEN)
    return Witness(origin=ledger.origin, log_key=ledger.log_key, signer=signer, state_file=state_file,
                   clock=lambda: 1_767_139_200)


def _checkpoint(h: Harness) -> bytes:
    r = h.client.get("/ledger/checkpoint")
    assert r.status_code == 200
    return r.content


def _forged_same_size(h: Harness, size: int) -> bytes:
    ledger = h.state.ledger
    assert ledger is not None
    signer = HybridNoteSigner(ledger.origin, ServerKeys.load_or_create(h.state.config.server.key_dir).signing, TOKEN)
    other = TransparencyLog(MemoryLogStore(), origin=ledger.origin, signer=signer)
    other.append([b"forged %d" % i for i in range(size)])
    return other.checkpoint()


def test_the_witness_cosigns_a_good_checkpoint_and_the_server_serves_the_cosignature(harness: Harness,
                                                                                      tmp_path: Path) -> None:
    # Prepare
    w = _witness(harness, "witness.a", tmp_path / "a.json")
    _round(harness)

    # Execute: poll twice across two rounds (the second needs a consistency proof)
    first = poll_once(harness.client, w)
    _round(harness)
    second = poll_once(harness.client, w)

    # Assert
    assert first is not None and second is not None and second > first == 9
    note = _checkpoint(harness)
    ledger = harness.state.ledger
    assert ledger is not None
    report = WitnessPolicy([w.verifier], 1).check(note, ledger.log_key.verifiers())
    assert report.count == 1 and report.cosignatures[0].name == "witness.a" and report.unknown == []
    # The state survived on disk (atomic swap) and a restarted witness carries on from it.
    again = _witness(harness, "witness.a", tmp_path / "a.json")
    assert again.size == second and not (tmp_path / "a.json.tmp").exists()
    assert poll_once(harness.client, again) == second  # same checkpoint: cosigned again, no proof needed


def test_the_witness_refuses_a_rollback_and_a_fork(harness: Harness) -> None:
    _round(harness)
    old = _checkpoint(harness)
    _round(harness)
    w = _witness(harness, "witness.a")
    size = poll_once(harness.client, w)
    assert size is not None

    # Rollback: the log shows an older checkpoint than the one the witness cosigned.
    with pytest.raises(InvalidInput) as info:
        w.add_checkpoint(format_add_checkpoint_request(w.size, [], old))
    assert info.value.reason == "old_size_beyond_checkpoint"
    # Fork: same size, other root, signed with the log's real key.
    with pytest.raises(LedgerIntegrityError) as fork:
        w.add_checkpoint(format_add_checkpoint_request(w.size, [], _forged_same_size(harness, size)))
    assert fork.value.reason == "checkpoint_fork"
    assert w.size == size  # refusals leave the state alone

    # The same over the tlog-witness HTTP endpoint.
    with TestClient(create_witness_app(w)) as http:
        assert http.post("/add-checkpoint", content=format_add_checkpoint_request(w.size, [], old)).status_code == 400
        forked = http.post("/add-checkpoint",
                           content=format_add_checkpoint_request(w.size, [], _forged_same_size(harness, size)))
        assert forked.status_code == 409 and b"checkpoint_fork" in forked.content
        stale = http.post("/add-checkpoint", content=format_add_checkpoint_request(0, [], _checkpoint(harness)))
        assert stale.status_code == 409 and stale.content == f"{size}\n".encode()
        assert stale.headers["content-type"].startswith("text/x.tlog.size")
        ok = http.post("/add-checkpoint", content=format_add_checkpoint_request(size, [], _checkpoint(harness)))
        assert ok.status_code == 200 and ok.content.startswith("— witness.a ".encode())
        assert http.get("/witness/key").text.strip() == w.verifier.verifier_key()


def test_a_cosignature_from_an_unknown_witness_key_is_ignored(harness: Harness) -> None:
    _round(harness)
    trusted, stranger = _witness(harness, "witness.a"), _witness(harness, "witness.b")
    poll_once(harness.client, stranger)
    note = _checkpoint(harness)
    ledger = harness.state.ledger
    assert ledger is not None
    policy = WitnessPolicy([trusted.verifier], 1)
    with pytest.raises(WitnessQuorumError) as info:
        policy.check(note, ledger.log_key.verifiers())
    assert info.value.report.count == 0 and [s.name for s in info.value.report.unknown] == ["witness.b"]
    poll_once(harness.client, trusted)
    report = policy.check(_checkpoint(harness), ledger.log_key.verifiers())
    assert report.count == 1 and [s.name for s in report.unknown] == ["witness.b"]


def test_a_device_requiring_one_witness_refuses_an_uncosigned_checkpoint(harness: Harness) -> None:
    _round(harness)
    w = _witness(harness, "witness.a")
    ledger = harness.state.ledger
    assert ledger is not None
    auditor = LedgerAuditor(HttpLedgerReader(harness.client), origin=ledger.origin, log_key=ledger.log_key,
                            witnesses=WitnessPolicy([w.verifier], 1))
    with pytest.raises(WitnessQuorumError) as info:
        auditor.check()
    assert info.value.reason == "witness_quorum_not_met"
    poll_once(harness.client, w)
    cp = auditor.check()
    assert cp is not None and cp.size == 9


def test_the_server_refuses_a_cosignature_that_does_not_verify(harness: Harness) -> None:
    _round(harness)
    w = _witness(harness, "witness.a")
    body = w.verifier.verifier_key().encode() + b"\n"
    forged = CosignatureSigner("witness.a", b"\x07" * 32, TOKEN).cosign(b"other checkpoint\n", 1).line()
    assert harness.client.post("/ledger/cosignature", content=body + forged).status_code == 400
    assert harness.client.post("/ledger/cosignature", content=b"garbage\n").status_code == 400
    assert harness.client.post("/ledger/cosignature", content=body).status_code == 400  # no line by that key


def test_qflare_witness_keygen_and_key(tmp_path: Path) -> None:
    runner = CliRunner()
    key = tmp_path / "w.key"
    made = runner.invoke(cli, ["witness", "keygen", "--key", str(key), "--name", "witness.example"])
    assert made.exit_code == 0, made.output
    shown = runner.invoke(cli, ["witness", "key", "--key", str(key)])
    assert shown.output == made.output and shown.output.startswith("witness.example+")
    assert load_witness_key(key).verifier().verifier_key() == shown.output.strip()
    assert runner.invoke(cli, ["witness", "keygen", "--key", str(key), "--name", "x"]).exit_code != 0
    assert (key.stat().st_mode & 0o777) == 0o600
    generate_witness_key(tmp_path / "other.key", "other")


def test_qflare_witness_run_as_its_own_process_cosigns_the_growing_log(harness: Harness, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    from qflare.ledger.cosignature import CosignatureVerifier
    from qflare.ledger.note import parse_note, parse_verifier_key
    from qflare.server.ledger import LOG_KEY_FILE

    from ..server.live import serve

    # Prepare: a witness key made by the CLI, and the log served over real HTTP
    env = {**os.environ, "COLUMNS": "200"}
    key = tmp_path / "witness.key"
    made = subprocess.run([sys.executable, "-m", "qflare", "witness", "keygen", "--key", str(key),
                           "--name", "witness.test"], capture_output=True, text=True, timeout=60, env=env)
    assert made.returncode == 0, made.stderr
    verifier = parse_verifier_key(made.stdout.strip())
    assert isinstance(verifier, CosignatureVerifier)
    log_key = str(Path(harness.state.config.server.key_dir) / LOG_KEY_FILE)
    ledger = harness.state.ledger
    assert ledger is not None
    _round(harness)

    def cosigned_size(port: int) -> int | None:
        import httpx

        note = httpx.get(f"http://127.0.0.1:{port}/ledger/checkpoint", timeout=10).content
        body, sigs = parse_note(note)
        mine = [g for g in sigs if (g.name, g.key_id) == (verifier.name, verifier.key_id)]
        if not mine:
            return None
        verifier.verify_cosignature(body, mine[0].signature)
        return int(body.split(b"\n")[1])

    with serve(harness.client.app) as port:  # type: ignore[arg-type]
        base = [sys.executable, "-m", "qflare", "witness", "run", "--key", str(key), "--log",
                f"http://127.0.0.1:{port}", "--log-key", log_key, "--state", str(tmp_path / "w.json")]
        # Execute / Assert: --once cosigns the current checkpoint and the server serves the cosignature
        once = subprocess.run([*base, "--once"], capture_output=True, text=True, timeout=120, env=env)
        assert once.returncode == 0, once.stderr
        size = ledger.store.latest_checkpoint().size  # type: ignore[union-attr]
        assert f"cosigned qflare.local/ledger at size {size}" in once.stdout
        assert cosigned_size(port) == size

        # Execute / Assert: the long-running witness follows the log as it grows (consistency from its state)
        proc = subprocess.Popen([*base, "--interval", "0.3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
        try:
            _round(harness)
            grown = ledger.store.latest_checkpoint().size  # type: ignore[union-attr]
            assert grown > size
            deadline = time.monotonic() + 60
            while cosigned_size(port) != grown and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            assert cosigned_size(port) == grown
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=30)
        assert f"cosigned qflare.local/ledger at size {grown}" in out
        assert "refusing to cosign" not in out


def test_a_device_waits_for_the_witness_to_cosign_the_newest_checkpoint_and_refuses_past_its_wait(
        harness: Harness) -> None:
    """A checkpoint is uncosigned until the witness polls: the device asks again meanwhile (never accepting it
    uncosigned), takes it once cosigned, and refuses with witness_quorum_not_met once witness_wait_seconds pass."""
    _round(harness)
    w = _witness(harness, "witness.a")
    ledger = harness.state.ledger
    assert ledger is not None
    now = [0.0]

    def witness_polls_while_the_device_sleeps(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 1.0:
            poll_once(harness.client, w)

    auditor = LedgerAuditor(HttpLedgerReader(harness.client), origin=ledger.origin, log_key=ledger.log_key,
                            witnesses=WitnessPolicy([w.verifier], 1), witness_wait_seconds=5,
                            clock=lambda: now[0], sleep=witness_polls_while_the_device_sleeps)
    cp = auditor.check()
    assert cp is not None and cp.size == 9 and now[0] == 1.0
    # The next round's checkpoint, and no witness any more: the device waits 5 s, then stops.
    _round(harness)
    idle = LedgerAuditor(HttpLedgerReader(harness.client), origin=ledger.origin, log_key=ledger.log_key,
                         witnesses=WitnessPolicy([w.verifier], 1), witness_wait_seconds=5,
                         clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    start = now[0]
    with pytest.raises(WitnessQuorumError):
        idle.check()
    assert now[0] - start == 5.0
