"""Issue 12: refusal events are bounded (age and count), purged by the ticker; other events stay."""

from __future__ import annotations

from qflare.server.app import NONCE_PURGE_EVERY, _tick
from tests.server.conftest import Harness


def test_refusal_events_are_purged_by_age_and_count(harness: Harness) -> None:
    # Prepare: 30 old refusals, 150 recent ones, and an old state-change event.
    repo, now = harness.state.repo, harness.state.clock()
    for i in range(30):
        repo.add_event("request_rejected", now=now - 10 * 86400, reason="old", detail=str(i))
    for i in range(150):
        repo.add_event("update_rejected", now=now - 1, reason="new", detail=str(i))
    repo.add_event("model_created", now=now - 10 * 86400, detail="kept")
    harness.state.config.server.__dict__["max_refusal_events"] = 100  # frozen model: a test-only override

    # Execute: the tick that purges.
    _tick(harness.state, NONCE_PURGE_EVERY)

    # Assert
    assert repo.count_events("request_rejected") == 0
    kept = repo.list_events(kind="update_rejected", limit=1000)
    assert len(kept) == 100 and {e.detail for e in kept} == {str(i) for i in range(50, 150)}
    assert repo.count_events("model_created") >= 1
