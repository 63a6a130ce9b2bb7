"""``qflare he init|show`` (the operator's CKKS contexts) and ``qflare simulate --he ckks`` over HTTP."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qflare.cli.app import app
from qflare.errors import ConfigError
from qflare.fl.he import load_public_context, load_secret_context


def test_he_init_writes_a_secret_file_for_devices_and_a_public_one_for_the_server(tmp_path: Path) -> None:
    # Execute
    secret, public = tmp_path / "dev" / "s.ctx", tmp_path / "srv" / "p.ctx"
    result = CliRunner().invoke(app, ["he", "init", "--secret-out", str(secret), "--public-out", str(public)])
    # Assert: the secret file is private to its owner and holds the key; the public one does not
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert load_secret_context(secret).has_secret_key()
    load_public_context(public)
    with pytest.raises(ConfigError) as err:
        load_public_context(secret)
    assert err.value.reason == "he_secret_key_on_server"
    fingerprint = result.output.split("fingerprint ")[1].split()[0]
    for path, kind in ((public, "public (server)"), (secret, "SECRET (devices only)")):
        shown = CliRunner().invoke(app, ["he", "show", str(path)])
        assert shown.exit_code == 0 and kind in shown.output and fingerprint in shown.output.replace("\n", "")
    # a second init does not overwrite the context devices hold, unless forced; one path for both is refused
    again = CliRunner().invoke(app, ["he", "init", "--secret-out", str(secret), "--public-out", str(public)])
    assert isinstance(again.exception, ConfigError) and again.exception.reason == "file_exists"
    same = CliRunner().invoke(app, ["he", "init", "--secret-out", str(secret), "--public-out", str(secret), "--force"])
    assert isinstance(same.exception, ConfigError) and "must differ" in same.exception.message


@pytest.mark.slow
def test_simulate_he_ckks_over_http_reports_accuracy_and_the_bytes_on_the_wire(tmp_path: Path) -> None:
    # Execute: 3 clients x 2 rounds over HTTP, devices encrypting, the server summing ciphertexts
    proc = subprocess.run(
        [sys.executable, "-m", "qflare", "simulate", "--he", "ckks", "--clients", "3", "--rounds", "2", "--task",
         "digits", "--partition", "iid", "--epochs", "1", "--runs-dir", str(tmp_path / "runs"), "--json"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # Assert: every update accepted, the operator side's accuracy, ciphertext-sized bodies both ways
    assert summary["he"] == "ckks" and summary["enclave"] == "none" and summary["rounds_completed"] == 2
    assert summary["accepted_updates"] == 6 and summary["rejected_updates"] == 0
    assert 0.2 < summary["final_accuracy"] <= 1  # chance is 0.1; 2 rounds of 1 epoch
    costs = summary["costs"]
    assert costs["device_trainings"] == 6
    assert costs["device_upload_bytes"] > 3_000_000 and costs["device_download_bytes"] > 3_000_000
    assert costs["device_encode_seconds"] > 0 and costs["server_update_seconds_per_round"] > 0
    run = Path(summary["run_dir"])
    # the server's config names only the public context; the secret one stays private to its owner
    config = (run / "global_config.yaml").read_text()
    assert "ckks-public.ctx" in config and "ckks-secret.ctx" not in config
    assert stat.S_IMODE((run / "he" / "ckks-secret.ctx").stat().st_mode) == 0o600


def test_qflare_server_refuses_a_secret_context_before_it_creates_anything(tmp_path: Path) -> None:
    # Prepare: a server config naming the devices' secret file as its context
    secret, public = tmp_path / "s.ctx", tmp_path / "p.ctx"
    made = CliRunner().invoke(app, ["he", "init", "--secret-out", str(secret), "--public-out", str(public)])
    assert made.exit_code == 0
    srv = tmp_path / "srv"
    srv.mkdir()
    (srv / "global_config.yaml").write_text(
        "task: digits\nenclave: {backend: none}\nevaluation: {enabled: false}\n"
        f"server: {{db_url: 'sqlite:///{srv / 'q.db'}', key_dir: '{srv / 'keys'}', port: 1}}\n"
        f"aggregation: {{rule: fedavg, he: {{scheme: ckks, public_context_file: '{secret}'}}}}\n")
    # Execute
    proc = subprocess.run([sys.executable, "-m", "qflare", "server", "--config", str(srv / "global_config.yaml")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    # Assert: a config error naming the reason, and no database or key file
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "he_secret_key_on_server" in proc.stderr + proc.stdout
    assert sorted(p.name for p in srv.iterdir()) == ["global_config.yaml"]
