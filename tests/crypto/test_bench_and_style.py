"""The bench helper runs; only crypto/_*.py import cryptography.hazmat."""

from __future__ import annotations

import ast
from pathlib import Path

import qflare.crypto
from qflare.crypto.bench import format_benchmark, run_benchmark


def test_bench_runs() -> None:
    result = run_benchmark(iterations=2, payload_size=4096)
    assert set(result.timings_ms) >= {"kem_decapsulate", "sign", "verify", "aead_decrypt_payload"}
    assert 4400 < result.request_overhead_bytes < 5000
    assert result.response_overhead_bytes == 36
    assert "request overhead" in format_benchmark(result)


def test_only_private_modules_import_hazmat() -> None:
    package = Path(qflare.crypto.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if path.name.startswith("_") and path.name != "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("cryptography.hazmat")]
    assert offenders == []
