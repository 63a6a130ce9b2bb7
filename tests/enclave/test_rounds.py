"""A round's checkpoint restores the exact running aggregate (the only place that reads
FedAvgAccumulator's private state, so a change there shows up here)."""

from __future__ import annotations

import pytest

from qflare.enclave.trusted.rounds import RoundState
from qflare.errors import InvalidInput
from qflare.fl.checks import ParsedUpdate
from qflare.fl.spec import ModelSpec

from .conftest import make_arrays

BASE = "cd" * 32


def add_updates(state: RoundState, seeds: range) -> None:
    for seed in seeds:
        state.add(f"{seed:032x}", ParsedUpdate(make_arrays(seed), num_examples=seed + 1, train_loss=None))


def test_a_restored_checkpoint_continues_to_the_same_aggregate(spec: ModelSpec) -> None:
    # Prepare
    uninterrupted = RoundState(round_id=5, spec=spec, base_sha256=BASE, base=None)
    add_updates(uninterrupted, range(6))
    before = RoundState(round_id=5, spec=spec, base_sha256=BASE, base=None)
    add_updates(before, range(4))
    header, plaintext = before.checkpoint()

    # Execute
    restored = RoundState(round_id=5, spec=spec, base_sha256=BASE, base=None)
    restored.restore(header, plaintext)
    add_updates(restored, range(4, 6))

    # Assert
    assert restored.acc.count == 6 and restored.acc.total_examples == uninterrupted.acc.total_examples
    for name, expected in uninterrupted.acc.result().items():
        assert restored.acc.result()[name].tobytes() == expected.tobytes()
    assert restored.counted(f"{0:032x}") and restored.since_checkpoint == 2


@pytest.mark.parametrize("other", [{"round_id": 6}, {"base_sha256": "ef" * 32}])
def test_a_checkpoint_of_another_round_or_base_model_is_refused(spec: ModelSpec, other: dict[str, object]) -> None:
    # Prepare
    state = RoundState(round_id=5, spec=spec, base_sha256=BASE, base=None)
    add_updates(state, range(2))
    header, plaintext = state.checkpoint()
    target = RoundState(**{"round_id": 5, "spec": spec, "base_sha256": BASE, "base": None, **other})  # type: ignore[arg-type]

    # Execute / Assert
    with pytest.raises(InvalidInput) as err:
        target.restore(header, plaintext)
    assert err.value.reason == "checkpoint_mismatch"


def test_a_truncated_checkpoint_is_refused(spec: ModelSpec) -> None:
    # Prepare
    state = RoundState(round_id=5, spec=spec, base_sha256=BASE, base=None)
    add_updates(state, range(2))
    header, plaintext = state.checkpoint()

    # Execute / Assert
    with pytest.raises(InvalidInput):
        RoundState(round_id=5, spec=spec, base_sha256=BASE, base=None).restore(header, plaintext[:-8])


def test_held_updates_are_bounded(spec: ModelSpec) -> None:
    # Prepare
    state = RoundState(round_id=5, spec=spec, base_sha256=BASE, base=None)

    # Execute
    for seed in range(5):
        state.hold(f"{seed:032x}", ParsedUpdate(make_arrays(seed), 1, None), limit=3)

    # Assert: the oldest were dropped (the host then replays their stored copies)
    assert list(state.pending) == [f"{seed:032x}" for seed in (2, 3, 4)]


@pytest.mark.parametrize("rule", ["fedavg", "krum"])
def test_a_checkpoint_built_from_state_views_has_the_bytes_of_one_from_copies(
    spec: ModelSpec, rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the streaming sum (partial half full) and a buffering rule
    from qflare.fl.strategies import get_strategy

    state = RoundState(round_id=5, spec=spec, base_sha256=BASE, base=None,
                       strategy=get_strategy(rule, **({"f": 1} if rule == "krum" else {})))
    add_updates(state, range(5))
    acc_type = type(state.acc)
    copying = acc_type.state

    # Execute: the checkpoint as it is made (views), then with the accumulator forced to copy first
    header, plaintext = state.checkpoint()
    monkeypatch.setattr(acc_type, "state", lambda self, *, copy=True: copying(self, copy=True))
    copied_header, copied_plaintext = state.checkpoint()

    # Assert: the same bytes, and the live state was not changed by being read
    assert (header, plaintext) == (copied_header, copied_plaintext)
    add_updates(state, range(5, 6))
    restored = RoundState(round_id=5, spec=spec, base_sha256=BASE, base=None, strategy=state.strategy)
    restored.restore(header, plaintext)
    add_updates(restored, range(5, 6))
    for name, expected in state.acc.result().items():
        assert restored.acc.result()[name].tobytes() == expected.tobytes()
