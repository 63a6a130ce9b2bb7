"""The public surface: explicit exports, and the numpy-only core importing no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

import qflare.fl
import qflare.fl.data
import qflare.fl.models
import qflare.fl.strategies
import qflare.fl.tasks
import qflare.types


@pytest.mark.parametrize(
    "module", [qflare.fl, qflare.fl.data, qflare.fl.models, qflare.fl.strategies, qflare.fl.tasks, qflare.types]
)
def test_all_names_resolve(module: object) -> None:
    # Execute
    names = module.__all__  # type: ignore[attr-defined]

    # Assert
    assert len(set(names)) == len(names)
    assert all(hasattr(module, name) for name in names)


def test_aggregation_and_transport_import_no_torch() -> None:
    # Prepare
    code = (
        "import sys; import qflare.fl, qflare.fl.aggregate, qflare.fl.serialize, qflare.fl.data; "
        "sys.exit('torch' in sys.modules)"
    )

    # Execute
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    # Assert
    assert result.returncode == 0, result.stderr
