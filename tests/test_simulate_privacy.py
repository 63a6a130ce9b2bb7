"""``qflare simulate --dp central``: options checked before anything starts, epsilon in the run summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qflare.cli.simulate_cmd import check_privacy
from qflare.errors import ConfigError
from qflare.fl.privacy import epsilon_for, plan_central


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"dp": "none", "noise_multiplier": 1.0}, "--noise-multiplier: given without --dp central"),
    ({"dp": "central"}, "--noise-multiplier Z or --target-epsilon E"),
    ({"dp": "central", "noise_multiplier": 1.0, "clip": 0.0}, "clip"),
    ({"dp": "central", "noise_multiplier": -1.0}, "noise_multiplier"),
    ({"dp": "central", "noise_multiplier": 0.5, "target_epsilon": 1.0}, "target_epsilon"),
    ({"dp": "local", "noise_multiplier": 1.0}, "--dp"),
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
    assert json.loads((Path(summary["run_dir"]) / "summary.json").read_text()) == summary
