"""Issue 12, ``qflare bench``: update ingest MB/s and round time, each with its baseline from the same run.

Structure and positive figures only: timings depend on the machine.
"""

from __future__ import annotations

import json
import warnings

import pytest
from typer.testing import CliRunner

from qflare.bench import ingest, rounds
from qflare.cli.app import app
from qflare.crypto.keyfile import UnencryptedKeyWarning


@pytest.mark.slow
def test_ingest_measures_authenticated_uploads_against_the_bare_endpoint() -> None:
    # Execute: a real server, 4 full-size uploads from 2 senders
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnencryptedKeyWarning)
        figures = ingest.run(uploads=4, clients=2)
    # Assert
    assert figures["errors"] == {"bare": 0, "authenticated": 0}
    assert figures["updates_recorded"] == 4  # every timed upload was accepted into the open round
    assert figures["update_bytes"] > 3_900_000 and figures["envelope_bytes"] > figures["update_bytes"]
    assert figures["bare_MB_per_s"] > 0 and figures["authenticated_MB_per_s"] > 0
    assert figures["ratio"] == pytest.approx(figures["authenticated_MB_per_s"] / figures["bare_MB_per_s"], rel=0.01)
    assert figures["authenticated_updates_per_s"] > 0
    assert all(v > 0 for v in figures["server_cpu_ms_per_upload"].values())


def test_round_time_comes_with_local_training_and_aggregation_alone() -> None:
    # Execute: 3 clients, one in-process round
    figures = rounds.run(clients=3, rounds=1)
    # Assert
    assert (figures["clients"], figures["rounds"], figures["task"]) == (3, 1, "digits")
    for key in ("round_seconds", "local_training_seconds", "aggregation_alone_seconds", "round_x_local_training",
                "round_x_aggregation", "params"):
        assert figures[key] > 0, key
    assert figures["round_seconds"] >= figures["local_training_seconds"]  # the training is part of the round
    assert figures["overhead_seconds"] == pytest.approx(figures["round_seconds"] - figures["local_training_seconds"])


def test_aggregation_alone_scales_with_the_model() -> None:
    assert rounds.aggregation_alone("digits", 2, repeat=1) > 0


def test_the_cli_runs_one_of_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rounds, "run", lambda clients, rounds, task: {"clients": clients, "round_seconds": 1.0})
    out = CliRunner().invoke(app, ["bench", "round", "--clients", "4", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"clients": 4, "round_seconds": 1.0}
