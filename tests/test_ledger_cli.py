"""`qflare ledger verify` after a short simulation passes, and names the entry after one stored byte flips."""

from __future__ import annotations

import os
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


def test_verify_after_simulate_and_after_a_flipped_byte(tmp_path: Path) -> None:
    # Prepare: 3 clients x 2 rounds over real HTTP (the runner behind `qflare simulate`).
    summary = run_simulation(SimulationConfig(task="digits", clients=3, rounds=2, partition="iid",
                                              runs_dir=tmp_path / "runs"))
    assert summary["rounds_completed"] == 2
    db = Path(summary["run_dir"]) / "qflare.db"
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
