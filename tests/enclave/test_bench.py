"""The enclave benchmark runs end to end and reports both backends (tiny sizes: figures come from the CLI)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_bench() -> ModuleType:
    from qflare.bench import enclave

    return enclave


def test_run_reports_throughput_for_both_backends_and_their_ratio(tmp_path: Path) -> None:
    # Prepare
    bench = load_bench()

    # Execute
    out = bench.run(updates=3, params=2_000, repeats=1, work_dir=tmp_path, tune=False)

    # Assert
    assert out["params"] == 2_000 and out["update_bytes"] > 8_000
    for mode in ("envelope", "plaintext"):
        figures = out[mode]
        assert figures["inprocess"]["updates_per_s"] > 0 and figures["enclave"]["mb_per_s"] > 0
        assert figures["ratio"] == round(figures["enclave"]["updates_per_s"] / figures["inprocess"]["updates_per_s"], 3)
