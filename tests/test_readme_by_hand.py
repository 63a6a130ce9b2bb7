"""The README's by-hand sequence, pasted line by line into a fresh shell, trains a federation.

Found by a new user: the README never said to activate ``.venv``; each device needed a hand-edited config;
a lone edge waited in silence. The test reads the bash block under "Running a server and devices by
hand" and feeds it, line by line, to a fresh ``bash`` (no rc files, a bare PATH, an empty home) in a
temporary directory holding ``configs/`` and a ``.venv`` link. The only change to what a user runs is
in the data: the copied ``global_config.yaml`` asks for 2 rounds of 1 epoch on a free port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from qflare.sim.net import free_port

ROOT = Path(__file__).resolve().parents[1]


def by_hand_lines() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Running a server and devices by hand", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "README: no bash block under 'Running a server and devices by hand'"
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


def test_the_readme_says_to_activate_the_venv_first() -> None:
    assert by_hand_lines()[0] == "source .venv/bin/activate"


@pytest.mark.slow
def test_the_by_hand_sequence_works_pasted_into_a_fresh_shell(tmp_path: Path) -> None:
    # Prepare: the repository's configs (2 rounds, 1 epoch, a free port) and the venv this test runs in.
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    cfg_path = tmp_path / "configs" / "global_config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["server"]["port"] = free_port()
    cfg["rounds"]["total"] = 2
    cfg["training"]["epochs"] = 1
    cfg_path.write_text(yaml.safe_dump(cfg))
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    assert (tmp_path / ".venv" / "bin" / "activate").exists(), "run the tests from a virtualenv (make test)"
    script = "\n".join(by_hand_lines()) + "\nkill $(jobs -p) 2>/dev/null; wait\n"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "COLUMNS": "80"}
    # Execute
    proc = subprocess.Popen(["bash", "--norc", "--noprofile", "-s"], cwd=tmp_path, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(script, timeout=540)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Assert
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    assert "edge_02 finished: trained 2 rounds, 2 updates accepted" in out, out
    assert "edge_01 finished: trained 2 rounds" in out, out
    # The server left what `qflare simulate` leaves: runs/<timestamp>/ with the summary, the CSV and the plot.
    # (the server writes them as it stops; on a loaded machine the last file can land a moment late)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "runs").glob("*/summary.json")) and time.monotonic() < deadline:
        time.sleep(0.5)
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 2 and summary["finished"] and summary["accepted_updates"] == 4, summary
    assert {"metrics.csv", "accuracy.png", "global_config.yaml"} <= {p.name for p in run_dir.iterdir()}
    assert f"run artefacts (metrics.csv, plot, summary.json) written to runs/{run_dir.name}" in out, out
    for device in ("edge_01", "edge_02"):
        folder = tmp_path / "devices" / device
        assert (folder / f"{device}.key").stat().st_mode & 0o777 == 0o600
        assert {"device_config.yaml", "ca.pem", f"{device}.pub"} <= {p.name for p in folder.iterdir()}
