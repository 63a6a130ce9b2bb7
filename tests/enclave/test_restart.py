"""An enclave process that dies or hangs mid-round: the call in flight fails with enclave_unavailable,
the backend starts a new process, and the round resumes from sealed state with the same aggregate."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from qflare.crypto.signing import SigningKey
from qflare.enclave.backend import EnclaveAggregator
from qflare.enclave.config import EnclaveConfig
from qflare.errors import EnclaveError
from qflare.fl.port import ValidatedUpdate
from qflare.fl.spec import ModelSpec
from tests.enclave.conftest import validate_bytes

from .conftest import ROUND, AggregatorFactory, make_envelope, make_update
from .test_backend import inprocess_model


def call_while_killed(backend: EnclaveAggregator, call: Callable[[], Any]) -> BaseException | None:
    """Freeze the enclave, start ``call`` (its request is then in the pipe), kill the enclave, return the error."""
    pid = backend.enclave.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.3)  # the worker is now blocked reading the answer of a process that cannot run
    os.kill(pid, signal.SIGKILL)
    worker.join(timeout=30)
    assert not worker.is_alive()
    return outcome[0]


def run_updates(backend: EnclaveAggregator, envelopes: list[bytes]) -> list[ValidatedUpdate]:
    validated = []
    for envelope in envelopes:
        v = validate_bytes(backend, ROUND, envelope)
        backend.accumulate(v)
        validated.append(v)
    return validated


def test_death_mid_call_is_unavailable_then_the_round_resumes_with_the_same_aggregate(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare: 5 updates counted, a checkpoint after the 4th (checkpoint_every=2 -> after 2 and 4)
    backend = start_aggregator(config=EnclaveConfig(checkpoint_every=2))
    kem = backend.public_keys().kem
    updates = [make_update(seed, num_examples=3 + seed) for seed in range(8)]
    envelopes = [make_envelope(device_key, kem, u, device_id=f"d{i}") for i, u in enumerate(updates)]
    backend.begin_round(ROUND, base_model, spec)
    run_updates(backend, envelopes[:5])
    old_pid = backend.enclave.pid
    state_dir = backend.enclave.launcher.work_dir / "state"  # type: ignore[attr-defined]

    # Execute: the enclave dies while validating the 6th update
    error = call_while_killed(backend, lambda: validate_bytes(backend, ROUND, envelopes[5]))
    checkpoints = list(state_dir.glob(f"round-{ROUND}-*.ckpt"))  # what the new process resumes from
    run_updates(backend, envelopes[5:])  # the device retried after its 503
    model = backend.finalize(ROUND)

    # Assert
    assert isinstance(error, EnclaveError) and error.reason == "enclave_unavailable"
    assert backend.enclave.restarts == 1 and backend.enclave.pid != old_pid
    assert len(checkpoints) == 1
    assert not list(state_dir.glob(f"round-{ROUND}-*.ckpt"))  # dropped once the round was aggregated
    assert model == inprocess_model(base_model, spec, updates)


def test_death_between_validate_and_accumulate_loses_no_update(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator(config=EnclaveConfig(checkpoint_every=4))
    kem = backend.public_keys().kem
    updates = [make_update(seed) for seed in range(4)]
    backend.begin_round(ROUND, base_model, spec)
    run_updates(backend, [make_envelope(device_key, kem, u, device_id=f"d{i}") for i, u in enumerate(updates[:2])])
    # the server stores it next
    pending = validate_bytes(backend, ROUND, make_envelope(device_key, kem, updates[2], device_id="d2"))

    # Execute: the enclave dies during accumulate; its held tensors are gone
    error = call_while_killed(backend, lambda: backend.accumulate(pending))
    backend.accumulate(pending)  # the orchestrator's retry after the restart
    run_updates(backend, [make_envelope(device_key, kem, updates[3], device_id="d3")])

    # Assert
    assert isinstance(error, EnclaveError) and error.reason == "enclave_unavailable"
    assert backend.finalize(ROUND) == inprocess_model(base_model, spec, updates)


def test_a_hung_enclave_times_out_and_is_replaced(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator(call_timeout=1.0)
    kem = backend.public_keys().kem
    updates = [make_update(seed) for seed in range(2)]
    backend.begin_round(ROUND, base_model, spec)
    run_updates(backend, [make_envelope(device_key, kem, updates[0], device_id="d0")])
    pid = backend.enclave.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)

    # Execute
    with pytest.raises(EnclaveError) as err:
        validate_bytes(backend, ROUND, make_envelope(device_key, kem, updates[1], device_id="d1"))
    run_updates(backend, [make_envelope(device_key, kem, updates[1], device_id="d1")])

    # Assert
    assert err.value.reason == "enclave_unavailable"
    assert backend.enclave.restarts == 1
    assert backend.finalize(ROUND) == inprocess_model(base_model, spec, updates)


def test_a_process_that_died_between_calls_is_restarted_before_the_next_call(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator(config=EnclaveConfig(checkpoint_every=1))
    kem = backend.public_keys().kem
    updates = [make_update(seed) for seed in range(3)]
    backend.begin_round(ROUND, base_model, spec)
    run_updates(backend, [make_envelope(device_key, kem, u, device_id=f"d{i}") for i, u in enumerate(updates[:2])])
    pid = backend.enclave.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while backend.enclave.running and time.monotonic() < deadline:
        time.sleep(0.01)

    # Execute
    run_updates(backend, [make_envelope(device_key, kem, updates[2], device_id="d2")])

    # Assert
    assert backend.enclave.restarts == 1
    assert backend.finalize(ROUND) == inprocess_model(base_model, spec, updates)


def test_a_lost_checkpoint_fails_the_restore_instead_of_dropping_updates(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare: 3 updates, the first 2 in a checkpoint the host has been told about
    backend = start_aggregator(config=EnclaveConfig(checkpoint_every=2))
    kem = backend.public_keys().kem
    backend.begin_round(ROUND, base_model, spec)
    validated = run_updates(
        backend, [make_envelope(device_key, kem, make_update(seed), device_id=f"d{seed}") for seed in range(3)])
    deadline = time.monotonic() + 10
    while len(backend._rounds[ROUND].uncheckpointed) > 1 and time.monotonic() < deadline:  # noqa: SLF001
        backend.accumulate(validated[-1])  # counted already: only collects the finished checkpoint
    assert len(backend._rounds[ROUND].uncheckpointed) == 1  # noqa: SLF001
    state_dir = backend.enclave.launcher.work_dir / "state"  # type: ignore[attr-defined]

    # Execute: the enclave dies and its checkpoint disappears from the untrusted disk
    envelope = make_envelope(device_key, kem, make_update(9), device_id="d9")
    error = call_while_killed(backend, lambda: validate_bytes(backend, ROUND, envelope))
    for checkpoint in state_dir.glob(f"round-{ROUND}-*.ckpt"):
        checkpoint.unlink()
    with pytest.raises(EnclaveError) as restore:
        validate_bytes(backend, ROUND, make_envelope(device_key, kem, make_update(9), device_id="d9"))

    # Assert
    assert isinstance(error, EnclaveError) and error.reason == "enclave_unavailable"
    assert restore.value.reason == "enclave_restore_failed"
    assert "restore_incomplete" in restore.value.message


def test_death_during_aggregation_is_unavailable_then_the_same_aggregate_is_finalized(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare: a full round counted, nothing checkpointed since the last update (checkpoint_every=2, 3 updates)
    backend = start_aggregator(config=EnclaveConfig(checkpoint_every=2))
    kem = backend.public_keys().kem
    updates = [make_update(seed, num_examples=2 + seed) for seed in range(3)]
    backend.begin_round(ROUND, base_model, spec)
    run_updates(backend, [make_envelope(device_key, kem, u, device_id=f"d{i}") for i, u in enumerate(updates)])

    # Execute: the enclave dies inside finalize (aggregating and signing the model); the host retries
    error = call_while_killed(backend, lambda: backend.finalize(ROUND))
    model = backend.finalize(ROUND)

    # Assert: every update counted once, and the aggregate signed by the restarted enclave
    assert isinstance(error, EnclaveError) and error.reason == "enclave_unavailable"
    assert backend.enclave.restarts == 1
    assert model == inprocess_model(base_model, spec, updates)
    assert backend.published_entry(ROUND) is not None


def test_stored_updates_beyond_the_host_memory_budget_are_spilled_and_replayed(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare: room in memory for one stored update; no checkpoint before the 4th update
    backend = start_aggregator(config=EnclaveConfig(checkpoint_every=4))
    backend.max_held_bytes = len(make_envelope(device_key, backend.public_keys().kem, make_update(0))) + 4096
    kem = backend.public_keys().kem
    updates = [make_update(seed) for seed in range(5)]
    envelopes = [make_envelope(device_key, kem, u, device_id=f"d{i}") for i, u in enumerate(updates)]
    backend.begin_round(ROUND, base_model, spec)
    run_updates(backend, envelopes[:3])
    spill_dir = backend._spill_dir
    assert spill_dir is not None
    backend._spiller.submit(lambda: None).result()  # the spill writes are done (one worker, in order)
    spilled = sorted(p.name for p in spill_dir.glob("*.stored"))
    in_memory = backend.held_bytes(ROUND)

    # Execute: the enclave dies; its replacement gets the held updates back from memory and the files
    error = call_while_killed(backend, lambda: validate_bytes(backend, ROUND, envelopes[3]))
    run_updates(backend, envelopes[3:])
    model = backend.finalize(ROUND)

    # Assert: memory stayed within the budget, two of three went to files, none is left after the round
    assert isinstance(error, EnclaveError) and error.reason == "enclave_unavailable"
    assert len(spilled) == 2 and 0 < in_memory <= backend.max_held_bytes
    assert model == inprocess_model(base_model, spec, updates)
    assert not list(spill_dir.glob("*.stored"))
