"""The request dependencies every device route runs before it reads the body."""

from __future__ import annotations

import inspect

from qflare.server import deps


def test_the_state_dependency_needs_no_worker_thread() -> None:
    # FastAPI runs a plain ``def`` dependency in the thread pool: with every worker thread busy storing
    # uploads, a waiting upload's body was not read, uvicorn paused it at 64 KiB and the body-chunk
    # timeout cut the connection (benchmarks/load_devices.py at 500 devices). ``get_state`` must be async.
    assert inspect.iscoroutinefunction(deps.get_state)
