"""qflare bench aggregate on a tiny input: every figure is there and the accumulator is exact."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from qflare.bench.aggregate import make_updates, run
from qflare.cli.app import app
from qflare.fl.aggregate import FedAvgAccumulator, fedavg
from qflare.fl.spec import ModelSpec


def test_the_figures_are_measured_against_a_copy_in_the_same_run() -> None:
    figures = run(clients=5, params=1000, f=1, repeat=1)
    assert figures["copy"]["GB_per_s"] > 0
    for key in ("flower_style_fedavg", "streaming_fedavg_arithmetic", "streaming_fedavg_add_validated"):
        assert figures[key]["x_copy_bandwidth"] > 0
    assert {"median", "trimmed-mean", "krum", "multi-krum"} <= set(figures)


def test_the_chunked_accumulator_matches_fedavg_across_chunk_boundaries() -> None:
    results = make_updates(4, 3 * FedAvgAccumulator._CHUNK + 7)
    acc = FedAvgAccumulator(ModelSpec.from_arrays(results[0][0]))
    for arrays, n in results:
        acc.add(arrays, n)
    expected = fedavg(results)
    for name, value in acc.result().items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6)


def test_the_cli_prints_json() -> None:
    out = CliRunner().invoke(app, ["bench", "aggregate", "--clients", "3", "--params", "100", "--no-rules",
                                   "--repeat", "1", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.strip().splitlines()[-1])["clients"] == 3
