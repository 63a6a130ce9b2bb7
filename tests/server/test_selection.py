"""Selection by availability, speed, staleness and contribution, with no device starving."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from qflare.server.selection import DeviceRecord, score, select_devices
from tests.server.conftest import Harness, make_harness


def _fleet() -> list[DeviceRecord]:
    fast = [DeviceRecord(f"fast_{i:02d}", median_seconds=1.0) for i in range(14)]
    slow = [DeviceRecord(f"slow_{i}", median_seconds=10.0, availability=0.5) for i in range(6)]
    return fast + slow


def _simulate(rounds: int, k: int, max_wait: int) -> tuple[Counter[str], dict[str, int]]:
    fleet = {r.device_id: r for r in _fleet()}
    since = dict.fromkeys(fleet, 1_000_000)
    counts: Counter[str] = Counter()
    worst_gap = dict.fromkeys(fleet, 0)
    for r in range(rounds):
        records = [DeviceRecord(**{**rec.__dict__, "rounds_since_selected": since[d]}) for d, rec in fleet.items()]
        chosen = select_devices(records, k, seed=f"s:{r}", max_wait_rounds=max_wait)
        assert len(chosen) == k and len(set(chosen)) == k
        for d in fleet:
            if d in chosen:
                if since[d] < 1_000_000:
                    worst_gap[d] = max(worst_gap[d], since[d])
                since[d] = 1
                counts[d] += 1
            else:
                since[d] = since[d] + 1 if since[d] < 1_000_000 else since[d]
    return counts, worst_gap


def test_fast_available_devices_are_preferred() -> None:
    counts, _ = _simulate(300, 5, max_wait=1000)
    fast = sum(v for d, v in counts.items() if d.startswith("fast")) / 14
    slow = sum(v for d, v in counts.items() if d.startswith("slow")) / 6
    assert fast > 3 * slow


def test_no_device_starves() -> None:
    # Execute: k=5 of 20 devices, max_wait 6 rounds
    counts, worst_gap = _simulate(300, 5, max_wait=6)

    # Assert: every device chosen, none waited more than max_wait rounds (at most k overdue at a time)
    assert set(counts) == {r.device_id for r in _fleet()}
    assert max(worst_gap.values()) <= 6


def test_score_factors() -> None:
    base = score(DeviceRecord("a", median_seconds=1.0), fastest_seconds=1.0)
    assert base == 1.0
    assert score(DeviceRecord("b", median_seconds=4.0), fastest_seconds=1.0) == 0.25
    assert score(DeviceRecord("c", staleness=3), fastest_seconds=None) == 0.5
    assert score(DeviceRecord("d", selected=10, accepted=0), fastest_seconds=None) == 0.05  # floor: never zero
    assert score(DeviceRecord("e", availability=0.5, selected=4, accepted=2), fastest_seconds=None) == 0.25


def test_selection_is_deterministic_and_bounded() -> None:
    fleet = _fleet()
    assert select_devices(fleet, 5, seed="x") == select_devices(fleet, 5, seed="x")
    assert select_devices(fleet, 50, seed="x") == sorted(r.device_id for r in fleet)
    assert select_devices([], 3, seed="x") == [] and select_devices(fleet, 0, seed="x") == []


def test_orchestrator_uses_the_selection_hook(tmp_path: Path) -> None:
    # Prepare: 2 of 3 devices per round, adaptive selection
    from qflare.server.selection import AdaptiveSelector

    gen = make_harness(tmp_path, total=3, fraction=0.5)
    h = next(gen)
    h.state.orchestrator.select = AdaptiveSelector(max_wait_rounds=2)
    chosen = []

    # Execute: three rounds, every selected device reports
    for _ in range(3):
        rid = h.open_round()
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None
        chosen.append(set(rnd.selected))
        for d in rnd.selected:
            assert h.post(d, f"/v1/device/rounds/{rid}/update", h.update_blob()).status_code == 200

    # Assert: 2 devices each round; the one left out of round 1 (never selected: overdue) is in round 2
    assert all(len(c) == 2 for c in chosen)
    assert chosen[0] == {"edge_0", "edge_1"} and "edge_2" in chosen[1]
    gen.close()


def test_rounds_selector_adaptive_in_config_prefers_reliable_devices_and_starves_none(tmp_path: Path) -> None:
    """``rounds.selector: adaptive``: over HTTP rounds, a device that never reports is selected less often
    than the reliable ones, yet every device is selected within max_wait_rounds + ceil(n / k) rounds."""
    from qflare.crypto import SigningKey
    from qflare.server.selection import AdaptiveSelector

    # Prepare: 6 devices, 2 per round; edge_5 is selected but never reports (the round closes at its deadline)
    keys = {f"edge_{i}": SigningKey.generate() for i in range(6)}
    gen = make_harness(tmp_path, keys, total=30, fraction=0.34, min_devices=6, min_quorum=1, selector="adaptive",
                       max_wait_rounds=4)
    h = next(gen)
    assert isinstance(h.state.orchestrator.select, AdaptiveSelector)
    picks: list[set[str]] = []

    # Execute
    for _ in range(30):
        rid = h.open_round()
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None
        picks.append(set(rnd.selected))
        for d in sorted(set(rnd.selected) - {"edge_5"}):
            assert h.post(d, f"/v1/device/rounds/{rid}/update", h.update_blob()).status_code == 200
        if "edge_5" in rnd.selected:
            h.clock.advance(61)
            h.state.orchestrator.tick()

    # Assert: 2 each round; no device waits longer than the bound; the unreliable one is taken less
    assert all(len(p) == 2 for p in picks)
    bound = 4 + 3  # max_wait_rounds + ceil(6 / 2)
    for d in keys:
        rounds_with = [i for i, p in enumerate(picks) if d in p]
        gaps = [b - a for a, b in zip([-1, *rounds_with], [*rounds_with, len(picks)], strict=True)]
        assert max(gaps) <= bound, (d, gaps)
    counts = Counter(d for p in picks for d in p)
    assert counts["edge_5"] < min(counts[d] for d in keys if d != "edge_5")
    gen.close()


def test_rounds_selector_uniform_is_the_default(harness: Harness) -> None:
    assert harness.state.config.rounds.selector == "uniform" and harness.state.orchestrator.select is None
