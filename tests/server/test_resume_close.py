"""Issue 12: a server killed between the round's last accepted update and the round's close aggregates
that round as soon as it restarts, instead of waiting for the deadline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qflare.fl.serialize import load_arrays
from qflare.server.rounds import Orchestrator
from tests.server.conftest import Harness, make_harness


def _upload(h: Harness, rid: int, device: str, scale: float):  # type: ignore[no-untyped-def]
    return h.post(device, f"/v1/device/rounds/{rid}/update", h.update_blob(num_examples=10, scale=scale))


def _crash_before_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in for a SIGKILL right after an update's commit: the close never runs."""
    monkeypatch.setattr(Orchestrator, "_aggregate", lambda self, rnd, *, reason: None)


@pytest.mark.parametrize(("uploads", "rounds_kw", "reason"), [
    (3, {}, "all_reported"),
    (2, {"close_on_quorum": True}, "quorum"),
])
def test_restart_after_last_update_aggregates_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uploads: int, rounds_kw: dict[str, object], reason: str
) -> None:
    # Prepare: every needed update durably accepted, then the "crash" before the round closes.
    with monkeypatch.context() as m:
        _crash_before_close(m)
        gen = make_harness(tmp_path, **rounds_kw)
        h = next(gen)
        rid = h.open_round()
        scales = [1.0, 3.0, 5.0][:uploads]
        for i, s in enumerate(scales):
            assert _upload(h, rid, f"edge_{i}", s).status_code == 200
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and rnd.status == "open"
        base = h.global_arrays()
        gen.close()

    # Execute: restart on the same database, with the clock still far from the deadline.
    gen2 = make_harness(tmp_path, h.keys, enroll_devices=False, **rounds_kw)
    h2 = next(gen2)

    # Assert: the round is aggregated by start-up itself, each update counted once.
    rnd = h2.state.repo.get_round(rid)
    assert rnd is not None and rnd.status == "aggregated", rnd
    assert rnd.close_reason == reason
    assert rnd.metrics is not None and rnd.metrics["num_updates"] == uploads
    new, _ = load_arrays(h2.state.repo.model_blob(1), h2.state.orchestrator.spec)
    expected = sum(scales) / len(scales)
    for name, arr in base.items():
        np.testing.assert_allclose(new[name], arr * expected, rtol=1e-5, atol=1e-6)
    gen2.close()


def test_restart_with_missing_updates_keeps_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = make_harness(tmp_path)
    h = next(gen)
    rid = h.open_round()
    assert _upload(h, rid, "edge_0", 1.0).status_code == 200
    gen.close()
    gen2 = make_harness(tmp_path, h.keys, enroll_devices=False)
    h2 = next(gen2)
    rnd = h2.state.repo.get_round(rid)
    assert rnd is not None and rnd.status == "open"
    gen2.close()
