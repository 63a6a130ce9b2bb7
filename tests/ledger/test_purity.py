"""The ledger package is pure: no web framework, no database, no server or enclave imports."""

from __future__ import annotations

import ast
from pathlib import Path

import qflare.ledger

FORBIDDEN = ("fastapi", "starlette", "sqlalchemy", "httpx", "qflare.server", "qflare.enclave", "cryptography")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_ledger_imports_nothing_impure() -> None:
    # Prepare
    files = sorted(Path(qflare.ledger.__file__).parent.glob("*.py"))

    # Execute
    bad = {
        (f.name, name)
        for f in files
        for name in _imports(f)
        if any(name == x or name.startswith(x + ".") for x in FORBIDDEN)
    }

    # Assert
    assert len(files) >= 10
    assert bad == set()


def test_all_is_explicit_and_resolves() -> None:
    # Prepare / Execute
    missing = [name for name in qflare.ledger.__all__ if not hasattr(qflare.ledger, name)]

    # Assert
    assert missing == []
    assert qflare.ledger.__all__ == sorted(qflare.ledger.__all__)
