"""Architecture rules, checked on the source: no layer imports one above it, no cycle between packages.

Layers, bottom to top (a package may import its own layer and those below)::

    0  qflare.errors, qflare.types, qflare.logs        (log format and the request/device ids it prints)
    1  qflare.crypto
    2  qflare.fl, qflare.qkd, qflare.ledger            (pure domain: no HTTP server, no SQL)
    3  qflare.enclave                                  (host client + trusted code + shared wire formats)
    4  qflare.edge, qflare.kme, qflare.witness         (device side; the KME and witness HTTP services)
    5  qflare.server                                   (FastAPI, SQLAlchemy)
    6  qflare.sim, qflare.bench, qflare.cli            (tools that drive everything)

``qflare.config`` (the settings models) sits between 2 and 3: domain validators may look up a registry.
Every import counts, including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "qflare"

LAYER = {
    "errors": 0, "types": 0, "logs": 0, "environment": 0, "__init__": 0, "__main__": 6,
    "crypto": 1,
    "fl": 2, "qkd": 2, "ledger": 2,
    "config": 2.5,
    "enclave": 3,
    "edge": 4, "kme": 4, "witness": 4,
    "server": 5,
    "sim": 6, "bench": 6, "cli": 6,
}
DOMAIN = ("crypto", "fl", "qkd", "ledger", "enclave")
WEB_AND_SQL = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "psycopg")


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules() -> list[tuple[str, Path, list[str]]]:
    return [(_package(p), p, _imports(p)) for p in sorted(SRC.rglob("*.py"))]


def test_every_package_has_a_layer() -> None:
    assert {pkg for pkg, _, _ in _modules()} <= set(LAYER)


def test_no_layer_imports_a_layer_above_it() -> None:
    offenders = []
    for pkg, path, names in _modules():
        for name in names:
            parts = name.split(".")
            if parts[0] != "qflare" or len(parts) < 2:
                continue
            target = parts[1]
            if LAYER.get(target, 0) > LAYER[pkg]:
                offenders.append(f"{path.relative_to(SRC)} imports {name}")
    assert offenders == []


@pytest.mark.parametrize("pkg", DOMAIN)
def test_domain_packages_never_import_web_or_sql_libraries(pkg: str) -> None:
    offenders = [f"{p.relative_to(SRC)}: {n}" for k, p, names in _modules() if k == pkg for n in names
                 if n.split(".")[0] in WEB_AND_SQL]
    assert offenders == []


def test_there_is_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for pkg, _, names in _modules():
        for name in names:
            parts = name.split(".")
            if parts[0] == "qflare" and len(parts) > 1 and parts[1] != pkg and parts[1] in LAYER:
                graph[pkg].add(parts[1])
    seen: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*stack, node, nxt])}")
            if nxt not in seen:
                visit(nxt, [*stack, node])
        seen[node] = 2

    for start in sorted(LAYER):
        if start not in seen:
            visit(start, [])


def test_the_edge_verifies_attestation_without_loading_host_code() -> None:
    # The attestation verifier and statements are importable by a device without the enclave's host side.
    code = (
        "import sys, qflare.edge.attestation, qflare.enclave.statements, qflare.enclave.verify\n"
        "host = [m for m in ('qflare.enclave.backend', 'qflare.enclave.client', 'qflare.enclave.launcher',"
        " 'qflare.server') if m in sys.modules]\n"
        "print(','.join(host))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
