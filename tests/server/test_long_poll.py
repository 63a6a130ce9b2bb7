"""The task route's long-poll (``?wait=``): a device learns of a new round as soon as it opens."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qflare.server.wakeup import Wakeup

from .conftest import Harness, make_harness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def test_wakeup_returns_at_once_when_the_generation_moved_and_times_out_otherwise() -> None:
    async def run() -> tuple[bool, bool, bool, float]:
        w = Wakeup()
        g = w.generation
        w.notify()
        moved = await w.wait(g, 5.0)  # changed before the wait began: no lost wake-up
        t0 = time.monotonic()
        timed_out = await w.wait(w.generation, 0.2)
        waited = time.monotonic() - t0
        g2 = w.generation
        threading.Timer(0.1, w.notify).start()  # from another thread, as the orchestrator does
        woken = await w.wait(g2, 10.0)
        return moved, timed_out, woken, waited

    moved, timed_out, woken, waited = asyncio.run(run())
    assert moved and not timed_out and woken and 0.15 < waited < 5


def _task(h: Harness, device: str, query: str = "") -> tuple[int, dict[str, object], float]:
    t0 = time.monotonic()
    r = h.post(device, f"/v1/device/task{query}")
    return r.status_code, json.loads(r.text), time.monotonic() - t0


def test_a_long_poll_is_answered_as_soon_as_the_round_opens(harness: Harness) -> None:
    # Prepare: all devices seen, no round yet; the round opens 0.5 s into the device's long-poll
    harness.poll_all()
    timer = threading.Timer(0.5, harness.state.orchestrator.tick)
    timer.start()

    # Execute
    status, task, took = _task(harness, "edge_0", "?wait=20")

    # Assert: a train answer well before the 20 s (the round opened at 0.5 s), and how long it was held
    timer.join()
    assert status == 200 and task["status"] == "train"
    assert 0.3 < took < 10
    assert isinstance(task["waited"], float) and 0.3 < task["waited"] < 10


def test_a_long_poll_with_nothing_new_is_held_and_then_says_so(harness: Harness) -> None:
    # Prepare: edge_0 already sent its update for the open round; nothing changes for 1 s
    rid = harness.open_round()
    assert harness.post("edge_0", f"/v1/device/rounds/{rid}/update", harness.update_blob()).status_code == 200

    # Execute
    status, task, took = _task(harness, "edge_0", "?wait=1")

    # Assert
    assert status == 200 and task["status"] == "wait" and "received" in str(task["reason"])
    assert took >= 0.9 and isinstance(task["waited"], float) and task["waited"] >= 0.9


def test_the_round_closing_wakes_a_device_that_waits_for_it(harness: Harness) -> None:
    # Prepare: two of three updates in; edge_0 long-polls; edge_2's update closes the round and opens the next
    rid = harness.open_round()
    for d in ("edge_0", "edge_1"):
        assert harness.post(d, f"/v1/device/rounds/{rid}/update", harness.update_blob()).status_code == 200
    timer = threading.Timer(0.5, lambda: harness.post("edge_2", f"/v1/device/rounds/{rid}/update",
                                                      harness.update_blob()))
    timer.start()

    # Execute
    status, task, took = _task(harness, "edge_0", "?wait=20")

    # Assert: the next round's task, as soon as it opened
    timer.join()
    assert status == 200 and task["status"] == "train" and task["round_id"] == rid + 1
    assert took < 10


def test_without_wait_the_answer_is_immediate_and_carries_no_waited(harness: Harness) -> None:
    status, task, took = _task(harness, "edge_0")
    assert status == 200 and task["status"] == "wait" and task["waited"] is None and took < 5


@pytest.mark.parametrize("value", ["abc", "-1", "31", "nan", "inf", "1e9", ""])
def test_a_bad_wait_is_refused_sealed_with_its_reason_and_changes_nothing(harness: Harness, value: str) -> None:
    # Prepare
    before = harness.snapshot()

    # Execute
    r = harness.post("edge_0", f"/v1/device/task?wait={value}")

    # Assert
    assert r.status_code == 400 and r.sealed
    assert json.loads(r.raw)["error"]["reason"] == "bad_wait"
    assert harness.snapshot() == before


class _WaitingServer:
    """Answers wait (held by the server or not), then done; records the wait the device asked for."""

    enclave = None
    attestation_required = False

    def __init__(self, waited: float | None) -> None:
        self.waited = waited
        self.asked: list[float] = []

    def task(self, wait: float = 0.0) -> dict[str, object]:
        self.asked.append(wait)
        if len(self.asked) < 3:
            return {"status": "wait", "retry_after": 2.0, "reason": "waiting", "waited": self.waited}
        return {"status": "done", "retry_after": 0}


@pytest.mark.parametrize(("waited", "sleeps"), [(10.0, []), (None, [1.0, 1.0])])
def test_an_edge_node_long_polls_and_does_not_sleep_after_a_held_answer(
    waited: float | None, sleeps: list[float]
) -> None:
    from qflare.edge.node import EdgeNode
    from tests.edge.test_client import _cfg

    # Prepare
    slept: list[float] = []
    server = _WaitingServer(waited)
    node = EdgeNode(_cfg(), server, sleep=slept.append)  # type: ignore[arg-type]

    # Execute
    node.run()

    # Assert: it asks the server to hold (10 s, the default) and sleeps only after a plain answer
    assert server.asked == [10.0, 10.0, 10.0]
    assert slept == sleeps


def test_a_device_config_whose_timeout_would_cut_a_long_poll_is_refused() -> None:
    from pydantic import ValidationError

    from qflare.config import DeviceConfig

    with pytest.raises(ValidationError, match="must exceed long_poll_seconds"):
        DeviceConfig(device_id="edge_01", identity_key_file="k", server_public_key_file="p",
                     long_poll_seconds=20, request_timeout_seconds=10)
    assert DeviceConfig(device_id="edge_01", identity_key_file="k", server_public_key_file="p",
                        long_poll_seconds=0, request_timeout_seconds=5).long_poll_seconds == 0


@pytest.mark.slow
def test_ctrl_c_answers_a_held_long_poll_at_once_and_the_server_stops_cleanly(tmp_path: Path) -> None:
    import signal

    from qflare.crypto.keyfile import read_public_key
    from qflare.edge.client import DeviceClient
    from qflare.sim.runner import SimulationConfig, build_global_config, free_port, start_server

    # Prepare: a real `qflare server` with no round (two devices needed, one enrolled): edge_01 long-polls
    config = build_global_config(SimulationConfig(task="digits", clients=2, rounds=1, enclave="none"), tmp_path,
                                 free_port())
    with start_server(config, tmp_path) as fed:
        key = fed.enroll("edge_01")
        client = DeviceClient(fed.url, "edge_01", key, read_public_key(fed.server_key_file()), timeout=60)
        answer: list[object] = []
        poll = threading.Thread(target=lambda: answer.append(client.task(wait=25)))
        poll.start()
        time.sleep(1.5)  # the request is held

        # Execute
        t0 = time.monotonic()
        fed.server.send_signal(signal.SIGINT)
        poll.join(timeout=20)
        code = fed.server.wait(timeout=30)
        took = time.monotonic() - t0
        client.close()

    # Assert: the held poll got its (wait) answer, the server exited 0 within a few seconds, no traceback
    log = (tmp_path / "logs" / "server.log").read_text() if (tmp_path / "logs" / "server.log").exists() else ""
    assert answer and isinstance(answer[0], dict) and answer[0]["status"] == "wait", answer
    assert took < 10, took
    assert code == 0, log[-2000:]
    assert "Traceback" not in log and "CancelledError" not in log
