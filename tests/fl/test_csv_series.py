"""CSV loader: the public METR-LA / UCI layouts, gaps forward-filled and counted, clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qflare.errors import ConfigError
from qflare.fl.data.csv_series import load_series_csv


def test_metr_style_file_loads_on_a_regular_grid(data_dir: Path) -> None:
    # Execute
    series = load_series_csv(data_dir / "metr_style_traffic.csv", variable="traffic")

    # Assert
    traffic = series.values("traffic")
    assert series.sensors == ("773869", "767541", "767542", "717447")
    assert series.step_minutes == 60
    assert traffic.shape == (240, 4) and traffic.dtype == np.float32
    assert str(series.timestamps[0]) == "2012-03-05T00:00" and str(series.timestamps[-1]) == "2012-03-14T23:00"
    assert np.all(np.diff(series.timestamps) == np.timedelta64(60, "m"))
    assert np.isfinite(traffic).all()
    assert series.missing_filled == 13  # 5 blank cells + 2 missing rows x 4 sensors


def test_missing_values_are_forward_filled(data_dir: Path) -> None:
    # Prepare
    series = load_series_csv(data_dir / "metr_style_traffic.csv", variable="traffic")
    traffic, stamps = series.values("traffic"), series.timestamps.astype(str)

    def at(stamp: str) -> np.ndarray:
        return traffic[int(np.flatnonzero(stamps == stamp)[0])]

    # Assert: each gap repeats the last reading before it
    assert at("2012-03-05T05:00")[0] == at("2012-03-05T04:00")[0]  # blank cell
    assert at("2012-03-06T07:00")[1] == at("2012-03-06T05:00")[1]  # two NaN cells in a row
    np.testing.assert_array_equal(at("2012-03-11T06:00"), at("2012-03-11T05:00"))  # deleted row
    assert at("2012-03-05T00:00")[2] == at("2012-03-05T01:00")[2] == 18  # leading gap: back-filled


def test_uci_air_quality_layout(data_dir: Path) -> None:
    # Execute
    series = load_series_csv(
        data_dir / "uci_style_air_quality.csv",
        variable="pollution",
        timestamp_columns=("Date", "Time"),
        timestamp_format="%d/%m/%Y %H.%M.%S",
        columns=["NO2(GT)", "CO(GT)"],
        decimal=",",
        missing_sentinel=-200,
    )

    # Assert
    values = series.values("pollution")
    assert series.sensors == ("NO2(GT)", "CO(GT)")
    assert values.shape == (240, 2)  # 10 days: long enough for the forecasting tasks (tests/data/README.md)
    assert str(series.timestamps[0]) == "2004-03-10T18:00"
    assert values[1, 1] == pytest.approx(1.6)  # "1,6"
    assert values[7, 0] == values[8, 0] == values[6, 0]  # two -200 readings forward-filled
    assert series.missing_filled == 3
    assert (values > 0).all()


def test_delimiter_is_sniffed_and_trailing_empty_columns_ignored(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "semi.csv"
    path.write_text("time;A;B;\n2024-01-01T00:00;1;2;\n2024-01-01T00:15;3;4;\n2024-01-01T00:30;5;;\n")

    # Execute
    series = load_series_csv(path)

    # Assert
    assert series.sensors == ("A", "B")
    assert series.step_minutes == 15
    np.testing.assert_array_equal(series.values("value"), np.array([[1, 2], [3, 4], [5, 4]], np.float32))
    assert series.missing_filled == 1


def test_zone_aware_timestamps_become_utc(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "tz.csv"
    path.write_text("t,s\n2024-01-01T01:00+01:00,1\n2024-01-01T02:00+01:00,2\n")

    # Execute
    series = load_series_csv(path)

    # Assert
    assert str(series.timestamps[0]) == "2024-01-01T00:00"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "line 1: file is empty"),
        ("t,a\n2024-01-01 00:00,1\n", "need at least two data rows"),
        ("t,a,a\n2024-01-01 00:00,1,2\n2024-01-01 01:00,1,2\n", "duplicate column names ['a']"),
        ("t\n2024-01-01 00:00\n2024-01-01 01:00\n", "no sensor columns"),
        ("t,a,b\n2024-01-01 00:00,1,2\n2024-01-01 01:00,1\n", "line 3: expected 3 fields, got 2"),
        ("t,a\n2024-01-01 00:00,1\nyesterday,2\n", "line 3: cannot parse timestamp 'yesterday'"),
        ("t,a\n2024-01-01 00:00,1\n2024-01-01 01:00,fast\n", "line 3: column 'a': 'fast' is not a number"),
        ("t,a\n2024-01-01 00:00,1\n2024-01-01 01:00,inf\n", "line 3: column 'a': 'inf' is not a finite"),
        ("t,a\n2024-01-01 01:00,1\n2024-01-01 00:00,2\n", "line 3: timestamp 2024-01-01T00:00 does not come after"),
        ("t,a\n2024-01-01 00:00,1\n2024-01-01 00:00,2\n", "line 3: timestamp 2024-01-01T00:00 does not come after"),
        (
            "t,a\n2024-01-01 00:00,1\n2024-01-01 01:00,2\n2024-01-01 02:30,3\n2024-01-01 03:30,3\n2024-01-01 04:30,3\n",
            "off the 60-minute grid",
        ),
        ("t,a\n2024-01-01 00:00,1\n2024-01-01 00:07,2\n", "7 min does not divide a day"),
        ("t,a,b\n2024-01-01 00:00,1,\n2024-01-01 01:00,2,NA\n", "column 'b' has no readings at all"),
    ],
)
def test_malformed_files_raise_config_error_with_line(tmp_path: Path, content: str, message: str) -> None:
    # Prepare
    path = tmp_path / "bad.csv"
    path.write_text(content)

    # Execute
    with pytest.raises(ConfigError) as info:
        load_series_csv(path)

    # Assert
    assert info.value.reason == "malformed_csv"
    assert message in info.value.message
    assert "bad.csv" in info.value.message


def test_unknown_column_and_missing_file(tmp_path: Path, data_dir: Path) -> None:
    # Execute
    with pytest.raises(ConfigError) as unknown:
        load_series_csv(data_dir / "metr_style_traffic.csv", columns=["999999"])
    with pytest.raises(ConfigError) as missing:
        load_series_csv(tmp_path / "absent.csv")

    # Assert
    assert unknown.value.reason == "malformed_csv" and "no column '999999'" in unknown.value.message
    assert missing.value.reason == "unreadable_csv"
