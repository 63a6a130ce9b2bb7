"""``qflare simulate`` city-fleet options: bad input refused in one line before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli_errors import assert_one_line_error, run_qflare


def test_bad_device_profile_row_is_named(tmp_path: Path) -> None:
    f = tmp_path / "profiles.csv"
    f.write_text("device_id,slowdown\nedge_01,1\nedge_02,slow\n")
    code, lines, imported = run_qflare(tmp_path, "simulate", "--clients", "2", "--device-profiles", str(f))
    assert_one_line_error(code, lines, "line 3, column slowdown", "'slow' is not a number")
    assert not imported, imported
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("args", "needles"), [
    (["--mode", "async", "--buffer", "5"], ["buffer 5 exceeds the 2 devices"]),
    (["--mode", "later"], ["--mode", "later"]),
    (["--personalize", "fedrep"], ["--personalize", "fedrep"]),
])
def test_async_and_personalize_options_are_checked_first(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    code, lines, imported = run_qflare(tmp_path, "simulate", "--clients", "2", *args)
    assert_one_line_error(code, lines, *needles)
    assert not imported, imported
