"""What ``qflare simulate`` leaves on screen and on disk: the progress bar ends on the run's final figures
(it used to read "5/10" beside a summary of 200 accepted), and the plot is named after the metric."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_progress_bar_ends_on_the_final_figures(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "qflare", "simulate", "--clients", "2", "--rounds", "1", "--enclave",
                           "none", "--epochs", "1", "--runs-dir", str(tmp_path / "runs")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    last_bar = [ln for ln in lines if ln.startswith("all rounds")]
    assert last_bar and "1/1" in last_bar[-1] and "updates accepted 2, rejected 0" in last_bar[-1], lines
    rounds_bar = [ln for ln in lines if ln.startswith("rounds ")]
    assert rounds_bar and "1/1 accuracy" in rounds_bar[-1], lines
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
