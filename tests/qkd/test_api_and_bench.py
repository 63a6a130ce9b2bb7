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


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_qkd_imports_no_web_server_and_only_the_client_imports_httpx() -> None:
    # Prepare
    servers = {"fastapi", "starlette", "uvicorn", "h11", "sqlalchemy"}
    package = Path(qflare.qkd.__file__).parent
    # Execute
    offenders = []
    for path in sorted(package.glob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in servers or (top == "httpx" and path.name != "client.py"):
                offenders.append(f"{path.name}: {name}")
    # Assert
    assert offenders == []
    assert "httpx" in _imports(package / "client.py")


def test_the_kme_service_lives_in_its_own_package() -> None:
    # Assert: the FastAPI app, the mTLS protocol and the pair server moved to qflare.kme
    import qflare.kme

    kme = Path(qflare.kme.__file__).parent
    assert "fastapi" in _imports(kme / "app.py") and "uvicorn" in _imports(kme / "pair.py")
    assert not (Path(qflare.qkd.__file__).parent / "etsi014.py").exists()


def test_bench_functions_run_on_small_inputs() -> None:
    # Prepare
    from qflare.bench import qkd as bench

    # Execute
    quantum = bench.bench_quantum(200_000, 0.05)
    pipeline = bench.bench_pipeline(200_000, 0.05)
    decoy = bench.bench_pipeline(2_000_000, 0.05, bench.DECOY_SOURCE)
    etsi = bench.bench_etsi(0.3, keys=100)
    # Assert
    assert quantum["pulses_per_s"] > 0 and pipeline["secret_bits_per_s"] > 0
    assert decoy["pulses_per_s"] > 0 and decoy["calls"] >= 1
    assert etsi["requests_per_s"] > 0
