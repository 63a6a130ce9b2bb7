"""Load sensor series from CSV in the common public layout: a timestamp column + one column per sensor.

This is how METR-LA / PEMS-BAY exports look (an index column of timestamps, then one column per
detector id) and, with ``delimiter=";"``, ``decimal=","``, ``timestamp_columns=("Date", "Time")``,
``timestamp_format="%d/%m/%Y %H.%M.%S"`` and ``missing_sentinel=-200``, the UCI Air Quality file.

Rows may be missing (gaps on the regular time grid) and cells may be empty or a missing token;
both are forward-filled (a leading gap is back-filled from the first reading) and counted in
``SensorSeries.missing_filled``. Anything else that does not parse raises ``ConfigError`` with
reason ``malformed_csv`` and the line and column at fault.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from qflare.errors import ConfigError
from qflare.fl.data.series import MINUTES_PER_DAY, SensorSeries

__all__ = ["MISSING_TOKENS", "CsvLayout", "CsvSource", "load_series_csv"]

MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "-"})


@dataclass(frozen=True)
class CsvLayout:
    """How a CSV is laid out: the options of :func:`load_series_csv` (hashable, so loads can be cached)."""

    delimiter: str | None = None
    decimal: str = "."
    timestamp_columns: tuple[str, ...] | None = None
    timestamp_format: str | None = None
    columns: tuple[str, ...] | None = None
    missing_sentinel: float | None = None


@dataclass(frozen=True)
class CsvSource:
    """A CSV file and its layout, accepted wherever a task takes ``csv_path``."""

    path: str
    layout: CsvLayout = CsvLayout()

    def __str__(self) -> str:
        return self.path


def load_series_csv(
    path: str | Path,
    *,
    variable: str = "value",
    timestamp_columns: Sequence[str] | None = None,
    timestamp_format: str | None = None,
    columns: Sequence[str] | None = None,
    delimiter: str | None = None,
    decimal: str = ".",
    missing_sentinel: float | None = None,
) -> SensorSeries:
    """Read a CSV of readings into a :class:`SensorSeries` with one variable.

    Parameters
    ----------
    path:
        The CSV file (UTF-8, optional BOM, header row first).
    variable:
        Name of the variable in the returned series (``"traffic"``, ``"pollution"``).
    timestamp_columns:
        Column(s) holding the time, joined with a space before parsing. Default: the first column.
    timestamp_format:
        ``strptime`` format; default ISO 8601 (``2012-03-01 00:05:00``, ``2012-03-01T00:05``).
        Zone-aware times are converted to UTC.
    columns:
        Sensor columns to keep, in that order. Default: every other column.
    delimiter:
        Field separator; default: whichever of ``,``, ``;``, tab the header uses most.
    decimal:
        Decimal mark of the numbers (``","`` for many European exports).
    missing_sentinel:
        A number meaning "missing" (``-200`` in UCI Air Quality, ``0`` in METR-LA speeds).

    Raises
    ------
    ConfigError
        reason ``malformed_csv`` (with line and column), or ``unreadable_csv``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read CSV {path}: {exc}", reason="unreadable_csv") from exc
    lines = text.splitlines()
    if not lines:
        raise _malformed(path, 1, "file is empty")
    sep = delimiter or max((",", ";", "\t"), key=lines[0].count)
    rows = [(n, row) for n, row in enumerate(csv.reader(lines, delimiter=sep), start=1) if any(c.strip() for c in row)]
    if not rows:
        raise _malformed(path, 1, "file is empty")
    header = [name.strip() for name in rows[0][1]]
    time_idx, sensor_idx = _select_columns(path, header, timestamp_columns, columns)
    body = rows[1:]
    if len(body) < 2:
        raise _malformed(path, len(rows), "need at least two data rows")

    times: list[np.datetime64] = []
    values = np.empty((len(body), len(sensor_idx)))
    for r, (line, row) in enumerate(body):
        if len(row) != len(header):
            raise _malformed(path, line, f"expected {len(header)} fields, got {len(row)}")
        stamp = " ".join(row[i].strip() for i in time_idx)
        times.append(_parse_time(path, line, stamp, timestamp_format))
        for c, i in enumerate(sensor_idx):
            values[r, c] = _parse_value(path, line, header[i], row[i], decimal, missing_sentinel)

    stamps = np.array(times, dtype="datetime64[m]")
    step = _regular_step(path, stamps, [line for line, _ in body])
    grid_len = int((stamps[-1] - stamps[0]) // np.timedelta64(step, "m")) + 1
    grid = np.full((grid_len, len(sensor_idx)), np.nan)
    grid[((stamps - stamps[0]) // np.timedelta64(step, "m")).astype(np.int64)] = values
    filled = _fill_missing(path, grid, [header[i] for i in sensor_idx])
    return SensorSeries(
        timestamps=stamps[0] + np.arange(grid_len) * np.timedelta64(step, "m"),
        sensors=tuple(header[i] for i in sensor_idx),
        variables={variable: grid.astype(np.float32)},
        step_minutes=step,
        missing_filled=filled,
    )


def _malformed(path: Path, line: int, what: str) -> ConfigError:
    return ConfigError(f"{path.name}, line {line}: {what}", reason="malformed_csv")


def _select_columns(
    path: Path, header: list[str], timestamp_columns: Sequence[str] | None, columns: Sequence[str] | None
) -> tuple[list[int], list[int]]:
    duplicates = sorted({h for h in header if h and header.count(h) > 1})
    if duplicates:
        raise _malformed(path, 1, f"duplicate column names {duplicates}")

    def index(name: str) -> int:
        if name not in header:
            raise _malformed(path, 1, f"no column {name!r}; columns are {header}")
        return header.index(name)

    time_idx = [index(name) for name in timestamp_columns] if timestamp_columns else [0]
    if columns is not None:
        sensor_idx = [index(name) for name in columns]
    else:
        # Unnamed trailing columns (a trailing separator on every line) are not sensors.
        sensor_idx = [i for i, name in enumerate(header) if i not in time_idx and name]
    if not sensor_idx:
        raise _malformed(path, 1, "no sensor columns besides the timestamp")
    return time_idx, sensor_idx


def _parse_time(path: Path, line: int, stamp: str, fmt: str | None) -> np.datetime64:
    try:
        moment = datetime.strptime(stamp, fmt) if fmt else datetime.fromisoformat(stamp)
    except ValueError:
        raise _malformed(path, line, f"cannot parse timestamp {stamp!r}") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(moment, "m")


def _parse_value(path: Path, line: int, column: str, cell: str, decimal: str, sentinel: float | None) -> float:
    token = cell.strip()
    if token.lower() in MISSING_TOKENS:
        return math.nan
    try:
        value = float(token.replace(decimal, ".") if decimal != "." else token)
    except ValueError:
        raise _malformed(path, line, f"column {column!r}: {token!r} is not a number") from None
    if not math.isfinite(value):
        raise _malformed(path, line, f"column {column!r}: {token!r} is not a finite number")
    if sentinel is not None and value == sentinel:
        return math.nan
    return value


def _regular_step(path: Path, stamps: np.ndarray, lines: list[int]) -> int:
    diffs = np.diff(stamps).astype("timedelta64[m]").astype(np.int64)
    bad = np.flatnonzero(diffs <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise _malformed(path, lines[i], f"timestamp {stamps[i]} does not come after {stamps[i - 1]}")
    kinds, counts = np.unique(diffs, return_counts=True)
    step = int(kinds[np.argmax(counts)])
    if MINUTES_PER_DAY % step:
        raise _malformed(path, lines[1], f"sampling step of {step} min does not divide a day")
    off_grid = np.flatnonzero(diffs % step)
    if off_grid.size:
        i = int(off_grid[0]) + 1
        raise _malformed(path, lines[i], f"timestamp {stamps[i]} is off the {step}-minute grid")
    return step


def _fill_missing(path: Path, grid: np.ndarray, names: list[str]) -> int:
    missing = np.isnan(grid)
    for c, name in enumerate(names):
        column = grid[:, c]
        valid = np.flatnonzero(~missing[:, c])
        if valid.size == 0:
            raise ConfigError(f"{path.name}: column {name!r} has no readings at all", reason="malformed_csv")
        # Index of the last valid reading at or before each step; before the first, the first.
        last = np.maximum.accumulate(np.where(missing[:, c], -1, np.arange(len(column))))
        grid[:, c] = column[np.where(last < 0, valid[0], last)]
    return int(missing.sum())
