"""The public API of qflare.qkd, the HTTP boundary, and the benchmark helper."""

from __future__ import annotations

import ast
from pathlib import Path

import qflare.qkd

ROOT = Path(__file__).resolve().parents[2]


def test_exported_members_exist() -> None:
    for name in qflare.qkd.__all__:
        assert hasattr(qflare.qkd, name), name
    assert sorted(qflare.qkd.__all__) == qflare.qkd.__all__


def test_only_etsi014_speaks_http() -> None:
    # Assert: qkd/ yields bytes; only etsi014.py imports web libraries
    http = {"fastapi", "starlette", "uvicorn", "httpx", "h11"}
    package = Path(qflare.qkd.__file__).parent
    offenders = []
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in http and path.name != "etsi014.py"]
    assert offenders == []


def test_bench_functions_run_on_small_inputs() -> None:
    # Prepare
    from qflare.bench import qkd as bench

    # Execute
    quantum = bench.bench_quantum(200_000, 0.05)
    pipeline = bench.bench_pipeline(200_000, 0.05)
    etsi = bench.bench_etsi(0.3, keys=100)
    # Assert
    assert quantum["pulses_per_s"] > 0 and pipeline["secret_bits_per_s"] > 0
    assert etsi["requests_per_s"] > 0
