"""qflare bench aggregate on a tiny input: every figure is there and the accumulator is exact."""

from __future__ import annotations

import json
from pathlib import Path

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
        assert figures[key]["cpu_seconds_median"] >= 0 and len(figures[key]["runs_seconds"]) == 1
    assert {"median", "trimmed-mean", "krum", "multi-krum"} <= set(figures)


def test_the_chunked_accumulator_matches_fedavg_across_chunk_boundaries() -> None:
    results = make_updates(4, 3 * FedAvgAccumulator._CHUNK + 7)
    acc = FedAvgAccumulator(ModelSpec.from_arrays(results[0][0]))
    for arrays, n in results:
        acc.add(arrays, n)
    expected = fedavg(results)
    total = sum(n for _, n in results)
    for name, value in acc.result().items():
        # the accumulator's stated tolerance (FedAvgAccumulator): float32 roundings of the weighted magnitudes
        magnitude = sum(np.abs(a[name].astype(np.float64)) * n for a, n in results) / total
        bound = (FedAvgAccumulator.FOLD + 1) * 2.0**-24 * magnitude + np.spacing(np.abs(expected[name]))
        assert np.all(np.abs(value.astype(np.float64) - expected[name]) <= bound)


def test_the_cli_prints_json() -> None:
    out = CliRunner().invoke(app, ["bench", "aggregate", "--clients", "3", "--params", "100", "--no-rules",
                                   "--no-production", "--repeat", "1", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.strip().splitlines()[-1])["clients"] == 3


def test_the_production_path_is_timed_against_flower_inplace_in_the_same_run() -> None:
    from qflare.bench.production import flower_aggregate_inplace, flower_bytes

    figures = run(clients=3, params=1000, f=0, repeat=1, rules=False, production=True, production_clients=3,
                  production_params=2000)
    prod = figures["production"]
    assert prod["flower_aggregate_inplace"]["median_s"] > 0 and prod["enclave_validate_accumulate"]["median_s"] > 0
    assert prod["enclave_vs_flower_speed"] > 0 and prod["host_held_MiB_max"] >= 0
    assert prod["cpu_s_median"]["flower"] >= 0 and prod["cpu_s_median"]["host"] >= 0
    if Path("/proc/self/stat").exists():  # the enclave process's CPU time is read from /proc
        assert prod["cpu_s_median"]["enclave"] >= 0
    # the Flower baseline computes FedAvg
    results = make_updates(3, 100)
    got = flower_aggregate_inplace([(flower_bytes(a), n) for a, n in results])
    for value, expected in zip(got, fedavg(results).values(), strict=True):
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
