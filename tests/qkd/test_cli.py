"""``qflare qkd`` commands, run through Typer's CliRunner (and one real ``kme serve`` process)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qflare.cli.qkd import app
from qflare.qkd.client import KMEClient

runner = CliRunner()


def test_bb84_prints_the_figures_and_json_last() -> None:
    # Execute
    result = runner.invoke(
        app, ["bb84", "--pulses", "500000", "--distance-km", "10", "--eavesdrop", "0", "--seed", "1", "--json"]
    )
    # Assert
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["aborted"] is False and figures["final_key_bits"] > 0
    assert {"sifted_bits", "qber_estimated", "leaked_bits", "final_key_bits"} <= set(figures)
    assert "sifted bits" in result.stdout and "final key bits" in result.stdout


def test_bb84_full_attack_aborts() -> None:
    result = runner.invoke(app, ["bb84", "--pulses", "300000", "--eavesdrop", "1", "--seed", "2", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["aborted"] is True and figures["abort_reason"] == "qber_above_threshold"
    assert abs(figures["qber_estimated"] - 0.25) < 0.03


def test_bb84_rejects_impossible_input() -> None:
    result = runner.invoke(app, ["bb84", "--eavesdrop", "1.5"])
    assert result.exit_code != 0


def test_sweep_writes_the_png(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "rate.png"
    # Execute
    result = runner.invoke(
        app,
        [
            "sweep",
            "--out",
            str(out),
            "--max-km",
            "200",
            "--step-km",
            "50",
            "--detections",
            "30000",
            "--max-pulses",
            "20000000",
            "--json",
        ],
    )
    # Assert
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = json.loads(result.stdout.strip().splitlines()[-1])["points"]
    assert len(points) == 15  # 5 distances x 3 sources
    assert {p["source"] for p in points} == {"single-photon", "weak-coherent", "decoy"}
    assert all(p["key_rate"] < p["plob_bound"] for p in points)


def test_sweep_on_the_gys_link_reports_the_lmc05_distances(tmp_path: Path) -> None:
    # Execute
    result = runner.invoke(
        app,
        ["sweep", "--gys", "--source", "decoy", "--out", str(tmp_path / "g.png"), "--max-km", "160",
         "--step-km", "80", "--detections", "20000", "--max-pulses", "20000000", "--json"],
    )  # fmt: skip
    # Assert
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert abs(figures["max_distance_km"]["decoy_infinite"] - 142) < 1.5
    assert {p["source"] for p in figures["points"]} == {"decoy"}


def test_bb84_decoy_source_under_pns_aborts() -> None:
    result = runner.invoke(app, ["bb84", "--source", "decoy", "--pulses", "20000000", "--pns", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["source"] == "decoy" and figures["pns"] is True
    assert figures["abort_reason"] == "decoy_bound_undefined"
    assert "Eve knows" in result.stdout


def test_bb84_weak_coherent_reports_what_eve_learned() -> None:
    result = runner.invoke(
        app, ["bb84", "--source", "weak-coherent", "--mu", "0.1", "--pulses", "20000000", "--pns", "--seed", "4",
              "--json"],
    )  # fmt: skip
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["final_key_bits"] > 0 and figures["eve_known_bits"] > 0 and figures["eve_key_info_bits"] == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--source", "decoy", "--mu", "1.5"], "signal mean photon number mu"),
        (["--source", "decoy", "--mu", "0.3", "--nu", "0.3"], "decoy mean photon number nu"),
        (["--source", "laser"], "--source must be one of"),
    ],
)
def test_bb84_bad_source_parameters_are_clear(args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["bb84", "--pulses", "1000", *args])
    assert result.exit_code == 2
    assert needle in result.output


def test_bb84_ibm_without_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("qiskit_ibm_runtime", reason="needs the extra: pip install qflare[qiskit]")
    monkeypatch.delenv("QFLARE_IBM_TOKEN", raising=False)
    result = runner.invoke(app, ["bb84", "--pulses", "1000", "--backend", "ibm"])
    assert result.exit_code == 2
    assert "ibm_token_missing" in result.output


def test_kme_pki_writes_ca_kme_and_sae_material(tmp_path: Path) -> None:
    result = runner.invoke(app, ["kme", "pki", str(tmp_path), "--sae", "edge-7", "--sae", "server"])
    assert result.exit_code == 0, result.output
    for name in ("ca.pem", "kme-a.pem", "kme-a.key", "kme-b.pem", "edge-7.pem", "edge-7.key", "server.key"):
        assert (tmp_path / name).is_file()
    assert (tmp_path / "edge-7.key").stat().st_mode & 0o077 == 0


def test_kme_serve_runs_a_pair_until_sigterm(tmp_path: Path) -> None:
    # Prepare
    assert runner.invoke(app, ["kme", "pki", str(tmp_path)]).exit_code == 0
    cmd = [
        sys.executable,
        "-m",
        "qflare.cli.qkd",
        "kme",
        "serve",
        "--port",
        "0",
        "--cert",
        str(tmp_path / "kme-a.pem"),
        "--key",
        str(tmp_path / "kme-a.key"),
        "--ca",
        str(tmp_path / "ca.pem"),
        "--sae-a",
        "edge-1",
        "--sae-b",
        "server",
        "--initial-keys",
        "50",
        "--pulses-per-frame",
        "500000",
        "--no-refill",
        "--seed",
        "3",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        edge = KMEClient(
            info["kme_a"], cert=tmp_path / "edge-1.pem", key=tmp_path / "edge-1.key", ca=tmp_path / "ca.pem"
        )
        server = KMEClient(
            info["kme_b"], cert=tmp_path / "server.pem", key=tmp_path / "server.key", ca=tmp_path / "ca.pem"
        )
        # Execute
        with edge, server:
            (key,) = edge.enc_keys("server")
            (same,) = server.dec_keys("edge-1", [key.key_id])
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        # Assert
        assert same == key and info["stored_key_count"] >= 50
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
