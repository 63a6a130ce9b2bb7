"""``qflare simulate --task traffic --csv FILE`` with the loader's options, on both layouts in tests/data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qflare.config import CsvLayoutConfig
from qflare.fl.data.csv_series import load_series_csv
from tests.test_cli_errors import assert_one_line_error, run_qflare

DATA = Path(__file__).resolve().parent / "data"
UCI = ["--csv", str(DATA / "uci_style_air_quality.csv"), "--csv-timestamp-columns", "Date,Time",
       "--csv-timestamp-format", "%d/%m/%Y %H.%M.%S", "--csv-decimal", ",", "--csv-missing", "-200",
       "--csv-columns", "NO2(GT),CO(GT)"]


def test_the_uci_layout_from_config_keys() -> None:
    cfg = CsvLayoutConfig(timestamp_columns=["Date", "Time"], timestamp_format="%d/%m/%Y %H.%M.%S", decimal=",",
                          missing_value=-200, columns=["NO2(GT)"])
    lay = cfg.source(str(DATA / "uci_style_air_quality.csv")).layout
    series = load_series_csv(DATA / "uci_style_air_quality.csv", delimiter=lay.delimiter, decimal=lay.decimal,
                             timestamp_columns=lay.timestamp_columns, timestamp_format=lay.timestamp_format,
                             columns=lay.columns, missing_sentinel=lay.missing_sentinel)
    assert series.sensors == ("NO2(GT)",) and series.missing_filled == 2


@pytest.mark.parametrize(
    ("drop", "needle"),
    [("--csv-decimal", "uci_style_air_quality.csv"), ("--csv-timestamp-format", "uci_style_air_quality.csv")],
)
def test_a_layout_that_does_not_fit_is_one_line_before_anything_starts(tmp_path: Path, drop: str,
                                                                      needle: str) -> None:
    i = UCI.index(drop)
    args = UCI[:i] + UCI[i + 2:]
    code, lines, imported = run_qflare(tmp_path, "simulate", "--task", "pollution", "--clients", "2", *args)
    assert_one_line_error(code, lines, needle, "line")
    assert not imported, imported


def test_csv_options_without_csv_and_csv_with_digits_are_refused(tmp_path: Path) -> None:
    code, lines, _ = run_qflare(tmp_path, "simulate", "--csv-missing", "0")
    assert_one_line_error(code, lines, "--csv-missing", "without --csv")
    code, lines, _ = run_qflare(tmp_path, "simulate", "--task", "digits", "--csv", str(DATA / "metr_style_traffic.csv"))
    assert_one_line_error(code, lines, "--csv", "digits")


@pytest.mark.slow
def test_simulate_trains_on_a_metr_style_csv(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qflare", "simulate", "--task", "traffic", "--clients", "2", "--rounds", "1",
         "--enclave", "none", "--epochs", "1", "--runs-dir", "runs", "--json", "--csv",
         str(DATA / "metr_style_traffic.csv"), "--csv-missing", "0"],
        cwd=tmp_path, env={**os.environ, "COLUMNS": "120"}, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["rounds_completed"] == 1 and summary["accepted_updates"] == 2
    run_dir = tmp_path / summary["run_dir"]  # relative to the command's directory, or absolute
    server = yaml.safe_load((run_dir / "global_config.yaml").read_text())
    assert server["evaluation"]["csv_path"].endswith("metr_style_traffic.csv")
    assert server["evaluation"]["csv"]["missing_value"] == 0
    assert (run_dir / "mae.png").exists()


def test_the_csv_check_knows_the_forecasting_tasks_window() -> None:
    from qflare.cli.simulate_cmd import FORECAST_TEST_DAYS, FORECAST_WINDOW
    from qflare.fl.tasks import get_task

    for name in ("traffic", "pollution"):
        task = get_task(name)
        assert (task.window, task.test_days) == (FORECAST_WINDOW, FORECAST_TEST_DAYS)  # type: ignore[attr-defined]


def test_a_csv_too_short_for_the_task_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    # Prepare: the UCI sample cut to its first two days (what the sample used to be)
    short = tmp_path / "two_days.csv"
    short.write_text("\n".join((DATA / "uci_style_air_quality.csv").read_text().splitlines()[:49]) + "\n")
    args = [short if a == str(DATA / "uci_style_air_quality.csv") else a for a in UCI]
    # Execute
    code, lines, imported = run_qflare(tmp_path, "simulate", "--task", "pollution", "--clients", "2",
                                       *map(str, args))
    # Assert
    assert_one_line_error(code, lines, "--csv", "too short for --task pollution", "48 steps", "2.0 days")
    assert not imported, imported


def test_csv_columns_that_cannot_be_split_between_the_clients_are_one_line_before_the_server(tmp_path: Path) -> None:
    one_column = [a if a != "NO2(GT),CO(GT)" else "NO2(GT)" for a in UCI]
    code, lines, _ = run_qflare(tmp_path, "simulate", "--task", "pollution", "--clients", "10", *one_column)
    assert_one_line_error(code, lines, "--clients 10 --partition sensor", "uci_style_air_quality.csv",
                          "cannot split 1 groups into 10")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing started


@pytest.mark.slow
def test_simulate_trains_on_a_uci_style_csv(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qflare", "simulate", "--task", "pollution", "--clients", "2", "--rounds", "1",
         "--enclave", "none", "--epochs", "1", "--runs-dir", "runs", "--json", *UCI],
        cwd=tmp_path, env={**os.environ, "COLUMNS": "120"}, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["rounds_completed"] == 1 and summary["accepted_updates"] == 2
    assert isinstance(summary["final_mae"], float) and summary["final_mae"] > 0
    run_dir = tmp_path / summary["run_dir"]
    server = yaml.safe_load((run_dir / "global_config.yaml").read_text())
    assert server["evaluation"]["csv"]["missing_value"] == -200 and server["evaluation"]["csv"]["decimal"] == ","
    assert (run_dir / "mae.png").exists()
