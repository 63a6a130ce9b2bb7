"""A server run by hand leaves what ``qflare simulate`` leaves: ``runs/<timestamp>/`` with ``metrics.csv``, the
metric's plot, ``summary.json`` and ``global_config.yaml`` (``qflare.cli.run_artefacts``)."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qflare.cli.run_artefacts import RunRecorder, write_run_artefacts
from tests.server.conftest import Harness, make_harness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    (tmp_path / "server").mkdir()
    yield from make_harness(tmp_path / "server")


def _close_round(h: Harness) -> None:
    rid = h.open_round()
    for device in h.keys:
        assert h.post(device, f"/v1/device/rounds/{rid}/update", h.update_blob()).status_code == 200


def test_the_artefacts_of_a_run_come_from_its_database(harness: Harness, tmp_path: Path) -> None:
    # Prepare: round 1 of 2 aggregated
    _close_round(harness)
    # Execute
    summary = write_run_artefacts(harness.state.config, harness.state.repo, tmp_path / "run")
    # Assert: the same files as a simulate run, with the run's figures
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert files == {"metrics.csv", "accuracy.png", "summary.json", "global_config.yaml"}
    assert (tmp_path / "run" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [(r["round_id"], r["status"], r["num_updates"]) for r in rows[:1]] == [("1", "aggregated", "3")]
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == summary and summary["source"] == "qflare server" and summary["devices"] == 3
    assert summary["rounds_completed"] == 1 and summary["rounds"] == 2 and not summary["finished"]
    assert summary["accepted_updates"] == 3 and isinstance(summary["final_accuracy"], float)


def test_nothing_is_written_before_a_round_and_the_watcher_writes_when_the_run_finishes(
    harness: Harness, tmp_path: Path,
) -> None:
    written: list[Path] = []
    done = {"finished": False}
    rec = RunRecorder(harness.state.config, harness.state.repo, tmp_path / "runs",
                      finished=lambda: done["finished"], on_written=written.append, interval=0.05)
    assert rec.write() is None and not (tmp_path / "runs").exists()  # no round yet: no empty run folder
    rec.start()
    _close_round(harness)
    done["finished"] = True
    deadline = time.monotonic() + 10
    while not written and time.monotonic() < deadline:
        time.sleep(0.05)
    assert written and written[0].parent == tmp_path / "runs"
    # At stop, the same folder is brought up to date (here: unchanged), not a second one.
    assert rec.close() == written[0] and len(list((tmp_path / "runs").iterdir())) == 1
