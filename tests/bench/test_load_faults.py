"""Issue 12, "Load" at 1000 devices: a device of the load generator must not vanish after transport errors.

At 1000 devices round 1 stopped at 593 of 1000 updates: the generator's task polls kept ending in a
``ReadError``, a device whose poll failed five times in a row gave up (its coroutine raised), and the
gather that held it was only looked at after the run's timeout, when it was cancelled: nobody saw the
devices go, and the round waited for them until the timeout. Here one of three devices has its task
polls reset (``httpx.ReadError`` injected in its transport), on 127.0.0.1, with a real ``qflare server``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import httpx
import pytest

from qflare.bench.load import LoadConfig, run_load
from qflare.crypto.envelope import parse_envelope
from qflare.crypto.keyfile import UnencryptedKeyWarning


class FaultyTransport(httpx.AsyncBaseTransport):
    """Resets (``ReadError``) the first ``failures`` requests of ``device`` to ``path``; the rest pass."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, device: str, path: str, failures: int,
                 error: type[Exception] = httpx.ReadError) -> None:
        self.inner, self.device, self.path, self.failures, self.error = inner, device, path, failures, error
        self.injected = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == self.path and self.injected < self.failures:
            env = parse_envelope(request.content, max_size=1 << 20)
            if env.device_id == self.device:
                self.injected += 1
                if issubclass(self.error, httpx.RequestError):
                    raise self.error("injected: connection reset", request=request)
                raise self.error("injected: not a transport error")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _run(cfg: LoadConfig, tmp_path: Path, faulty: list[FaultyTransport], **fault: object) -> dict[str, object]:
    def wrap(inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        t = FaultyTransport(inner, **fault)  # type: ignore[arg-type]
        faulty.append(t)
        return t

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnencryptedKeyWarning)
        return run_load(cfg, workdir=tmp_path, transport=wrap)


@pytest.mark.slow
def test_a_device_whose_task_polls_are_reset_five_times_in_a_row_still_uploads(tmp_path: Path) -> None:
    # Prepare: 3 devices, 1 round that needs all 3 (as at 1000: min_quorum = devices); device 0's
    # first 5 task polls are reset, as many as the generator used to try before giving up
    cfg = LoadConfig(devices=3, rounds=1, task="digits", long_poll_seconds=2.0, run_timeout_seconds=60.0,
                     retry_seconds=0.05, max_retry_seconds=0.2, devices_per_client=2)
    faulty: list[FaultyTransport] = []
    # Execute
    run = _run(cfg, tmp_path, faulty, device="load_0000", path="/v1/device/task", failures=5)
    # Assert: the device retried and uploaded; the round closed with all three, nothing lost or doubled
    assert sum(t.injected for t in faulty) == 5
    assert len(faulty) == 2  # one connection pool per 2 devices (httpcore's pool costs its size squared)
    assert run["stopped"] == "", run["stopped"]
    assert run["acknowledged"] == run["recorded"] == 3
    assert run["lost"] == [] and run["double_counted"] == 0
    assert run["rounds_completed"] == 1
    errors = run["errors"]
    assert isinstance(errors, dict) and errors.get("task:ReadError") == 5
    assert run["unfinished_devices"] == {} and not any(k.startswith("device_failed") for k in errors)


@pytest.mark.slow
def test_a_run_stopped_by_its_timeout_says_where_each_device_was_waiting(tmp_path: Path) -> None:
    # Prepare: device 0's task polls are reset for ever; the run has 6 s
    cfg = LoadConfig(devices=3, rounds=1, task="digits", long_poll_seconds=2.0, run_timeout_seconds=6.0,
                     retry_seconds=0.05, max_retry_seconds=0.2)
    faulty: list[FaultyTransport] = []
    # Execute
    run = _run(cfg, tmp_path, faulty, device="load_0000", path="/v1/device/task", failures=10**9)
    # Assert: stopped by the timeout, and every device accounted for: device 0 still at its task poll (never
    # given up), the two others long-polling for a round that waits for device 0 (or still uploading)
    assert run["stopped"] == "stopped: not finished after 6 s"
    unfinished = run["unfinished_devices"]
    assert isinstance(unfinished, dict) and sum(unfinished.values()) == 3, unfinished
    assert unfinished.get("task: waiting to retry after ReadError", 0) + unfinished.get("task", 0) >= 1, unfinished
    assert set(unfinished) <= {"task", "task: waiting to retry after ReadError", "heartbeat", "sealing its upload",
                               "uploading"}, unfinished
    assert run["acknowledged"] == run["recorded"] and run["recorded"] <= 2 and run["lost"] == []
    errors = run["errors"]
    assert isinstance(errors, dict) and errors["task:ReadError"] >= 5
    assert not any(k.startswith("device_failed") for k in errors)


@pytest.mark.slow
def test_a_device_that_fails_stops_the_run_at_once_and_says_which(tmp_path: Path) -> None:
    # Prepare: device 0's first task poll raises something no retry can help (not a transport error)
    cfg = LoadConfig(devices=3, rounds=1, task="digits", long_poll_seconds=2.0, run_timeout_seconds=120.0)
    faulty: list[FaultyTransport] = []
    # Execute
    run = _run(cfg, tmp_path, faulty, device="load_0000", path="/v1/device/task", failures=1, error=RuntimeError)
    # Assert: the run did not wait for its timeout; it says which device failed and how
    assert "load_0000" in str(run["stopped"]) and "RuntimeError" in str(run["stopped"]), run["stopped"]
    assert float(run["drive_seconds"]) < 60.0  # type: ignore[arg-type]
    errors = run["errors"]
    assert isinstance(errors, dict) and errors.get("device_failed:RuntimeError") == 1
    assert run["lost"] == [] and run["double_counted"] == 0

