"""The enclave writes the ledger's update_accepted and aggregate_published entries itself, signed with its key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qflare.crypto.signing import SigningKey
from qflare.enclave.config import EnclaveConfig
from qflare.errors import DuplicateUpdate
from qflare.fl.checks import l2_norm
from qflare.fl.serialize import sha256_hex
from qflare.fl.spec import ModelSpec
from qflare.ledger.entries import AggregatePublished, UpdateAccepted, decode_event, sign_entry, verify_entry
from tests.enclave.conftest import (
    ROUND,
    AggregatorFactory,
    make_arrays,
    make_envelope,
    make_update,
    validate_bytes,
)

NOW = 1767139200.0


def test_each_accepted_update_comes_with_its_entry_signed_by_the_enclave(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator()
    backend.clock = lambda: NOW
    kem, enclave_key = backend.public_keys().kem, backend.public_keys().signing
    backend.begin_round(ROUND, base_model, spec)

    # Execute
    validated = [
        validate_bytes(backend, ROUND, make_envelope(device_key, kem, make_update(seed, num_examples=10 + seed),
                                                     device_id=f"dev-{seed}"))
        for seed in range(3)
    ]

    # Assert: device, round, update hash, sample count and norm, as the enclave saw them, at the host's time
    for seed, v in enumerate(validated):
        assert v.ledger_entry is not None
        event = decode_event(v.ledger_entry)
        assert isinstance(event, UpdateAccepted)
        assert (event.device_id, event.round_id, event.envelope_sha256, event.sample_count) == (
            f"dev-{seed}", ROUND, v.sha256, 10 + seed)
        assert event.update_norm == pytest.approx(l2_norm(make_arrays(seed)), rel=1e-6)  # base model is zeros
        assert v.norm == event.update_norm
        assert (event.verdict, event.time_ms) == ("accepted", int(NOW * 1000))
        verify_entry(event, enclave_key)


def test_the_aggregate_entry_names_the_model_rule_and_every_counted_device(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator(config=EnclaveConfig(aggregation_rule="trimmed-mean",
                                                    aggregation_params={"beta": 0.2}))
    kem = backend.public_keys().kem
    backend.begin_round(ROUND, base_model, spec)
    for seed in range(5):
        env = make_envelope(device_key, kem, make_update(seed, num_examples=seed + 1), device_id=f"dev-{seed}")
        backend.accumulate(validate_bytes(backend, ROUND, env))

    # Execute
    model = backend.finalize(ROUND)
    entry = backend.published_entry(ROUND)

    # Assert
    assert entry is not None
    event = decode_event(entry)
    assert isinstance(event, AggregatePublished)
    assert event.model_sha256 == sha256_hex(model)
    assert (event.round_id, event.rule) == (ROUND, "trimmed-mean")
    assert event.parameters == {"beta": "0.2", "weighting": "num_examples"}
    assert event.participants == tuple((f"dev-{s}", float(s + 1)) for s in range(5))
    verify_entry(event, backend.public_keys().signing)


def test_the_host_cannot_forge_the_enclave_entries(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare: the host edits the enclave's entry (a larger sample count), or signs its own with its key
    backend = start_aggregator()
    backend.begin_round(ROUND, base_model, spec)
    v = validate_bytes(backend, ROUND, make_envelope(device_key, backend.public_keys().kem, make_update(1)))
    assert v.ledger_entry is not None
    real = decode_event(v.ledger_entry)
    assert isinstance(real, UpdateAccepted)
    edited = UpdateAccepted(real.device_id, real.round_id, real.envelope_sha256, 60000, real.update_norm,
                            real.verdict, real.time_ms, real.producer_signature)
    host_signed = sign_entry(edited, SigningKey.generate())

    # Execute / Assert
    for forged in (edited, host_signed):
        with pytest.raises(Exception) as err:
            verify_entry(forged, backend.public_keys().signing)
        assert getattr(err.value, "reason", None) == "invalid_entry_signature"


def test_a_second_update_of_one_device_in_a_round_is_refused_inside(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare: a host that replays a device's retried upload (a new envelope) to count it twice
    backend = start_aggregator()
    kem = backend.public_keys().kem
    backend.begin_round(ROUND, base_model, spec)
    backend.accumulate(validate_bytes(backend, ROUND, make_envelope(device_key, kem, make_update(1))))

    # Execute
    with pytest.raises(DuplicateUpdate) as err:
        validate_bytes(backend, ROUND, make_envelope(device_key, kem, make_update(2)))

    # Assert: refused with its reason, and the round still holds one update
    assert err.value.reason == "enclave_duplicate_device"
    backend.finalize(ROUND)
    entry = backend.published_entry(ROUND)
    assert entry is not None
    event = decode_event(entry)
    assert isinstance(event, AggregatePublished)
    assert event.participants == (("dev-1", 10.0),)


def test_participants_survive_an_enclave_restart(
    tmp_path: Path, start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare: three updates counted (a checkpoint after two), then the server and enclave go away
    work = tmp_path / "enclave"
    first = start_aggregator(work, config=EnclaveConfig(checkpoint_every=2))
    first.begin_round(ROUND, base_model, spec)
    stored = []
    for seed in range(3):
        v = validate_bytes(first, ROUND, make_envelope(device_key, first.public_keys().kem, make_update(seed),
                                                       device_id=f"dev-{seed}"))
        first.accumulate(v)
        stored.append(v.stored)
    first.close()

    # Execute: a new enclave restores the round from its checkpoint plus the replayed stored updates
    second = start_aggregator(work, config=EnclaveConfig(checkpoint_every=2))
    second.begin_round(ROUND, base_model, spec)
    for blob in stored:
        second.replay(ROUND, blob)
    model = second.finalize(ROUND)

    # Assert
    entry = second.published_entry(ROUND)
    assert entry is not None
    event = decode_event(entry)
    assert isinstance(event, AggregatePublished)
    assert event.model_sha256 == sha256_hex(model)
    assert sorted(d for d, _ in event.participants) == ["dev-0", "dev-1", "dev-2"]
    verify_entry(event, second.public_keys().signing)


def test_plaintext_updates_get_no_enclave_entry(
    start_aggregator: AggregatorFactory, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare: plaintext mode (benchmarks): the enclave does not know the sender
    backend = start_aggregator(inputs="plaintext")
    backend.begin_round(ROUND, base_model, spec)

    # Execute
    v = validate_bytes(backend, ROUND, make_update(1))
    backend.accumulate(v)
    backend.finalize(ROUND)

    # Assert: the norm is still measured, but no entry names a device the enclave did not check
    assert v.ledger_entry is None and backend.published_entry(ROUND) is None
    assert v.norm == pytest.approx(float(np.sqrt(sum(np.sum(a.astype(np.float64) ** 2)
                                                     for a in make_arrays(1).values()))), rel=1e-6)
