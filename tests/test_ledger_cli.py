"""`qflare ledger verify` after a short simulation passes, and names the entry after one stored byte flips."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from qflare.sim.runner import SimulationConfig, run_simulation

pytestmark = pytest.mark.slow


def _ledger(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qflare", "ledger", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 clients x 2 rounds over real HTTP (the runner behind `qflare simulate`), once for the module."""
    summary = run_simulation(SimulationConfig(task="digits", clients=3, rounds=2, partition="iid",
                                              runs_dir=tmp_path_factory.mktemp("sim") / "runs"))
    assert summary["rounds_completed"] == 2
    return Path(summary["run_dir"])


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """The database and the log key beside it (what `ledger verify --db` reads), copied for one test."""
    dest = tmp_path / "run"
    shutil.copytree(run_dir / "server-keys", dest / "server-keys")
    shutil.copy(run_dir / "qflare.db", dest / "qflare.db")
    return dest / "qflare.db"


def test_the_simulated_devices_audited_the_ledger(simulated: Path) -> None:
    # Every device pinned the log key, verified checkpoints and proved its accepted updates included.
    for device in ("edge_01", "edge_02", "edge_03"):
        state = json.loads((simulated / "devices" / f"{device}.ledger.json").read_text())
        assert state["verified_updates"] >= 1 and state["checkpoint"].startswith("qflare.local/ledger\n")
        log = (simulated / "logs" / f"{device}.log").read_text()
        assert "proven included in checkpoint" in log and "refusing to go on" not in log


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 command-line tool is not installed "
                                                           "(apt-get install sqlite3)")
def test_verify_fails_naming_the_entry_after_a_byte_flipped_with_the_sqlite3_tool(simulated: Path,
                                                                                  tmp_path: Path) -> None:
    # Prepare
    db = _copy_run(simulated, tmp_path)
    url = f"sqlite:///{db}"
    assert _ledger("verify", "--db", url).returncode == 0
    sqlite3_cli = shutil.which("sqlite3")
    assert sqlite3_cli is not None
    read = subprocess.run([sqlite3_cli, str(db), "select hex(entry) from ledger_entries where idx = 7"],
                          capture_output=True, text=True, check=True)
    entry = bytearray.fromhex(read.stdout.strip())
    entry[40] ^= 0x01

    # Execute: the sqlite3 tool writes the entry back with one byte flipped.
    subprocess.run([sqlite3_cli, str(db), f"update ledger_entries set entry = X'{entry.hex()}' where idx = 7"],
                   check=True)

    # Assert
    bad = _ledger("verify", "--db", url)
    assert bad.returncode == 1
    assert "entry 7" in bad.stdout and "leaf_hash_mismatch" in bad.stdout


def test_verify_after_simulate_and_after_a_flipped_byte(simulated: Path, tmp_path: Path) -> None:
    db = _copy_run(simulated, tmp_path)
    url = f"sqlite:///{db}"

    # Execute / Assert: the honest log verifies; show and audit work.
    ok = _ledger("verify", "--db", url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 checkpoints verified" in ok.stdout
    audit = _ledger("audit", "--db", url, "--round", "1")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert audit.stdout.count("update_accepted") == 3 and "participant" in audit.stdout
    show = _ledger("show", "--db", url, "--device", "edge_01")
    assert show.returncode == 0 and "edge_01" in show.stdout

    # One byte of stored leaf 5 flipped with the sqlite3 module.
    with sqlite3.connect(db) as c:
        (entry,) = c.execute("select entry from ledger_entries where idx = 5").fetchone()
        forged = bytearray(entry)
        forged[30] ^= 0x01
        c.execute("update ledger_entries set entry = ? where idx = 5", (bytes(forged),))
    bad = _ledger("verify", "--db", url)
    assert bad.returncode == 1
    assert "entry 5" in bad.stdout and "leaf_hash_mismatch" in bad.stdout


def test_with_the_enclave_the_log_key_is_the_enclaves_and_a_host_key_does_not_verify(simulated: Path,
                                                                                    tmp_path: Path) -> None:
    from qflare.crypto.keyfile import read_public_key, write_public_key
    from qflare.crypto.signing import SigningKey
    from qflare.ledger import HybridLogKey, verify_log
    from qflare.server.storage.ledger_store import SqlLogStore

    # The simulation ran the (simulated) enclave: it signed the checkpoints, and the key file the devices
    # pinned and `ledger verify` defaults to is the enclave's signing key (its sealed keys' public half).
    db = _copy_run(simulated, tmp_path)
    key_file = db.parent / "server-keys" / "ledger-log.pub"
    assert key_file.exists() and not (simulated / "server-keys" / "server-sign.key").exists()
    enclave_key = read_public_key(key_file)
    assert verify_log(SqlLogStore(f"sqlite:///{db}"),
                      HybridLogKey.from_verify_key("qflare.local/ledger", enclave_key)).ok  # type: ignore[arg-type]
    other = write_public_key(tmp_path / "host.pub", SigningKey.generate().public_key())
    bad = _ledger("verify", "--db", f"sqlite:///{db}", "--key", str(other))
    assert bad.returncode == 1, bad.stdout + bad.stderr
