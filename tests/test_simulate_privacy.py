"""``qflare simulate --dp central|local`` and ``--he ckks``: options checked before anything starts, epsilon and
costs in the run summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qflare.cli.simulate_cmd import check_he_options, check_local_privacy, check_privacy, privacy_line
from qflare.errors import ConfigError
from qflare.fl.privacy import epsilon_for, plan_central


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"dp": "none", "noise_multiplier": 1.0}, "--noise-multiplier: given without --dp central"),
    ({"dp": "central"}, "--noise-multiplier Z or --target-epsilon E"),
    ({"dp": "central", "noise_multiplier": 1.0, "clip": 0.0}, "clip"),
    ({"dp": "central", "noise_multiplier": -1.0}, "noise_multiplier"),
    ({"dp": "central", "noise_multiplier": 0.5, "target_epsilon": 1.0}, "target_epsilon"),
    ({"dp": "sideways", "noise_multiplier": 1.0}, "--dp"),
    ({"dp": "local", "noise_multiplier": 1.0, "clip": 1.0}, "--max-grad-norm"),
])
def test_bad_dp_options_are_refused_naming_the_option(kwargs: dict[str, object], needle: str) -> None:
    args = {"noise_multiplier": None, "clip": None, "target_epsilon": None, "delta": None, **kwargs}
    with pytest.raises(ConfigError) as err:
        check_privacy(fraction=1.0, rounds=2, **args)  # type: ignore[arg-type]
    assert needle in err.value.message


def test_dp_options_become_aggregation_privacy() -> None:
    assert check_privacy("none", noise_multiplier=None, clip=None, target_epsilon=None, delta=None, fraction=1.0,
                         rounds=2) == {}
    assert check_privacy("central", noise_multiplier=None, clip=0.5, target_epsilon=8.0, delta=None, fraction=1.0,
                         rounds=2) == {"mode": "central", "clip": 0.5, "target_epsilon": 8.0}


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"dp": "none", "max_grad_norm": 1.0}, "--max-grad-norm: given without --dp local"),
    ({"dp": "local"}, "--noise-multiplier Z or --target-epsilon E"),
    ({"dp": "local", "noise_multiplier": 1.0, "max_grad_norm": 0.0}, "max_grad_norm"),
    ({"dp": "local", "noise_multiplier": -1.0}, "noise_multiplier"),
    ({"dp": "local", "target_epsilon": 8.0, "delta": 2.0}, "delta"),
])
def test_bad_local_dp_options_are_refused_naming_the_option(kwargs: dict[str, object], needle: str) -> None:
    args = {"noise_multiplier": None, "max_grad_norm": None, "target_epsilon": None, "delta": None, **kwargs}
    with pytest.raises(ConfigError) as err:
        check_local_privacy(rounds=2, **args)  # type: ignore[arg-type]
    assert needle in err.value.message


def test_local_dp_options_become_training_dp() -> None:
    assert check_local_privacy("central", noise_multiplier=1.0, max_grad_norm=None, target_epsilon=None, delta=None,
                               rounds=2) == {}
    assert check_local_privacy("local", noise_multiplier=None, max_grad_norm=0.5, target_epsilon=8.0, delta=None,
                               rounds=20) == {"mode": "local", "max_grad_norm": 0.5, "target_epsilon": 8.0,
                                              "rounds": 20}
    assert check_privacy("local", noise_multiplier=None, clip=None, target_epsilon=8.0, delta=None, fraction=1.0,
                         rounds=2) == {}


def test_an_unreachable_local_budget_is_refused_before_anything_starts(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qflare", "simulate", "--clients", "3", "--rounds", "20", "--dp", "local",
         "--noise-multiplier", "0.3", "--target-epsilon", "1", "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode != 0
    assert "privacy_budget_exceeded" in proc.stderr and "--dp local: a device with" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_the_summary_line_names_mode_epsilon_and_delta() -> None:
    central = privacy_line({"mode": "central", "epsilon": 7.99, "delta": 1e-5, "rounds": 20, "noise_multiplier": 2.85})
    assert "central DP" in central and "epsilon 7.990" in central and "delta 1e-05" in central
    local = privacy_line({"mode": "local", "epsilon": 8.0, "epsilon_mean": 7.5, "delta": 1e-5, "devices": 10})
    assert "local DP" in local and "epsilon 8.000" in local and "10 devices" in local


@pytest.mark.slow
def test_simulate_with_local_dp_reports_each_devices_epsilon(tmp_path: Path) -> None:
    # Execute: 3 devices x 2 rounds, each device's noise multiplier picked by Opacus for epsilon 8 in 2 rounds
    proc = subprocess.run(
        [sys.executable, "-m", "qflare", "simulate", "--clients", "3", "--rounds", "2", "--task", "digits",
         "--partition", "iid", "--epochs", "1", "--dp", "local", "--target-epsilon", "8",
         "--runs-dir", str(tmp_path / "runs"), "--json"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # Assert: every device's accountant spent (about) its budget and no more; the log line says so
    privacy = summary["privacy"]
    assert privacy["mode"] == "local" and privacy["delta"] == 1e-5 and privacy["devices"] == 3
    assert sorted(privacy["per_device"]) == ["edge_01", "edge_02", "edge_03"]
    assert all(7.5 < e <= 8.0 for e in privacy["per_device"].values())
    assert "privacy: local DP" in proc.stderr
    logs = Path(summary["run_dir"]) / "logs"
    assert "round 2 local DP: epsilon" in (logs / "edge_01.log").read_text()


@pytest.mark.slow
def test_simulate_with_central_dp_reports_the_epsilon_spent(tmp_path: Path) -> None:
    # Execute: 3 clients x 2 rounds through the (simulated) enclave, the accountant picking z for epsilon 8
    proc = subprocess.run(
        [sys.executable, "-m", "qflare", "simulate", "--clients", "3", "--rounds", "2", "--task", "digits",
         "--partition", "iid", "--epochs", "1", "--dp", "central", "--target-epsilon", "8", "--clip", "1.0",
         "--runs-dir", str(tmp_path / "runs"), "--json"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # Assert: the epsilon of the last aggregated round, from the host's accountant, within the budget
    assert summary["rounds_completed"] == 2 and summary["enclave"] == "simulated"
    z = plan_central(noise_multiplier=None, target_epsilon=8.0, delta=1e-5, sampling_rate=1.0, rounds=2)
    privacy = summary["privacy"]
    assert privacy["mode"] == "central" and privacy["delta"] == 1e-5 and privacy["rounds"] == 2
    assert privacy["noise_multiplier"] == pytest.approx(z.noise_multiplier)
    assert privacy["epsilon"] == pytest.approx(epsilon_for(z.noise_multiplier, 1.0, 2, 1e-5))
    assert 0 < privacy["epsilon"] <= 8.0
    assert "privacy: central DP (per device), epsilon" in proc.stderr
    assert json.loads((Path(summary["run_dir"]) / "summary.json").read_text()) == summary


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"dp": "central"}, "--dp"),
    ({"attack": "sign-flip"}, "--attack"),
    ({"aggregator": "median"}, "--aggregator"),
    ({"mode": "async"}, "--mode async"),
])
def test_simulate_he_ckks_refuses_what_ciphertexts_cannot_do(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"dp": "none", "attack": None, "attackers": None, "aggregator": "bounded-fedavg",
                               "mode": "sync", "personalize": None, "csv": None, **kwargs}
    with pytest.raises(ConfigError) as err:
        check_he_options(**args)  # type: ignore[arg-type]
    assert err.value.reason == "bad_option" and needle in err.value.message


@pytest.mark.slow
def test_simulate_he_ckks_inprocess_reports_accuracy_and_costs() -> None:
    from typer.testing import CliRunner

    from qflare.cli.app import app

    result = CliRunner().invoke(app, ["simulate", "--he", "ckks", "--he-inprocess", "--clients", "2", "--rounds", "1",
                                      "--epochs", "1", "--partition", "iid"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["he"] == "ckks" and summary["transport"] == "in-process" and summary["rounds_completed"] == 1
    assert summary["bytes_up_per_device"] > 10 * summary["plaintext_bytes_up_per_device"]
    assert 0 <= summary["final_accuracy"] <= 1
