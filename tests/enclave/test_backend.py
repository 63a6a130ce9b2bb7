"""EnclaveAggregator as the server's AggregationBackend: same aggregate as in process, sealed storage,
replay after a server restart, refusals for bad updates, and the enclave's signatures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from qflare.crypto.envelope import parse_envelope, seal_request
from qflare.crypto.signing import SigningKey
from qflare.enclave.backend import EnclaveUpdateHandle
from qflare.enclave.config import EnclaveConfig
from qflare.enclave.statements import RoundTask, verify_model_signature, verify_task_signature
from qflare.errors import (
    AggregationError,
    CryptoError,
    DecryptionFailed,
    InvalidInput,
    InvalidSignature,
    ModelSpecMismatch,
    NonFiniteValues,
    NotFound,
    PermissionDenied,
    UpdateRejected,
)
from qflare.fl.serialize import dump_arrays, sha256_hex
from qflare.fl.spec import ModelSpec
from qflare.server.aggregation import InProcessAggregator
from tests.enclave.conftest import validate_bytes

from .conftest import ROUND, AggregatorFactory, make_arrays, make_envelope, make_update


def inprocess_model(base_model: bytes, spec: ModelSpec, updates: list[bytes], round_id: int = ROUND) -> bytes:
    agg = InProcessAggregator()
    agg.begin_round(round_id, base_model, spec)
    for blob in updates:
        agg.accumulate(validate_bytes(agg, round_id, blob))
    return agg.finalize(round_id)


def test_envelope_round_gives_the_in_process_aggregate_and_a_verifiable_signature(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator()
    kem = backend.public_keys().kem
    updates = [make_update(seed, num_examples=seed + 1) for seed in range(5)]
    envelopes = [make_envelope(device_key, kem, u, device_id=f"dev-{i}") for i, u in enumerate(updates)]
    backend.begin_round(ROUND, base_model, spec)

    # Execute
    validated = [validate_bytes(backend, ROUND, e) for e in envelopes]
    for v in validated:
        backend.accumulate(v)
    model = backend.finalize(ROUND)

    # Assert
    assert model == inprocess_model(base_model, spec, updates)
    assert [v.sha256 for v in validated] == [sha256_hex(u) for u in updates]
    assert [v.num_examples for v in validated] == [1, 2, 3, 4, 5]
    assert all(isinstance(v.handle, EnclaveUpdateHandle) for v in validated)
    verify_model_signature(model, backend.model_signature(ROUND), enclave_key=backend.public_keys().signing,
                           round_id=ROUND)  # fmt: skip


def test_plaintext_inputs_give_the_same_aggregate(
    start_aggregator: AggregatorFactory, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator(inputs="plaintext")
    updates = [make_update(seed, train_loss="0.5") for seed in range(3)]
    backend.begin_round(ROUND, base_model, spec)

    # Execute
    for u in updates:
        backend.accumulate(validate_bytes(backend, ROUND, u))

    # Assert
    assert backend.finalize(ROUND) == inprocess_model(base_model, spec, updates)


def test_the_server_stores_only_ciphertext(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator()
    plain = start_aggregator(inputs="plaintext")
    update = make_update(11)
    tensor_bytes = make_arrays(11)["fc.weight"].tobytes()
    for b in (backend, plain):
        b.begin_round(ROUND, base_model, spec)

    # Execute
    from_envelope = validate_bytes(backend, ROUND, make_envelope(device_key, backend.public_keys().kem, update)).stored
    from_plaintext = validate_bytes(plain, ROUND, update).stored

    # Assert
    for stored in (from_envelope, from_plaintext):
        assert tensor_bytes[:64] not in stored and tensor_bytes[-64:] not in stored
        assert update not in stored


def test_a_restarted_server_replays_stored_updates_to_the_same_aggregate(
    tmp_path: Path, start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare: a first server accepts three updates, stores them, and goes away
    work = tmp_path / "enclave"
    first = start_aggregator(work, config=EnclaveConfig(checkpoint_every=2))
    updates = [make_update(seed) for seed in range(3)]
    first.begin_round(ROUND, base_model, spec)
    stored = []
    first_keys = first.public_keys()
    for i, u in enumerate(updates):
        v = validate_bytes(first, ROUND, make_envelope(device_key, first_keys.kem, u, device_id=f"dev-{i}"))
        first.accumulate(v)
        stored.append(v.stored)
    first.close()

    # Execute: a second server (new enclave process, same sealed state) replays what it stored
    second = start_aggregator(work, config=EnclaveConfig(checkpoint_every=2))
    second.begin_round(ROUND, base_model, spec)
    for blob in stored + stored[:1]:  # one replayed twice: the enclave counts it once
        second.replay(ROUND, blob)

    # Assert
    assert second.public_keys() == first_keys
    assert second.finalize(ROUND) == inprocess_model(base_model, spec, updates)


def test_a_stored_update_cannot_be_replayed_into_another_round(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator(inputs="plaintext")
    backend.begin_round(ROUND, base_model, spec)
    backend.begin_round(ROUND + 1, base_model, spec)
    stored = validate_bytes(backend, ROUND, make_update(1)).stored

    # Execute / Assert
    with pytest.raises(InvalidInput) as err:
        backend.replay(ROUND + 1, stored)
    assert err.value.reason == "round_mismatch"


def test_an_altered_stored_update_is_refused(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator()
    backend.begin_round(ROUND, base_model, spec)
    envelope = make_envelope(device_key, backend.public_keys().kem, make_update(1))
    stored = validate_bytes(backend, ROUND, envelope).stored
    key_blob_flip, envelope_flip = bytearray(stored), bytearray(stored)
    key_blob_flip[60] ^= 0x01
    envelope_flip[stored.index(parse_envelope(envelope, max_size=1 << 20).body) + 40] ^= 0x01

    # Execute / Assert
    with pytest.raises(CryptoError) as key_err:
        backend.replay(ROUND, bytes(key_blob_flip))
    with pytest.raises(DecryptionFailed):
        backend.replay(ROUND, bytes(envelope_flip))
    assert key_err.value.reason == "unseal_failed"


@pytest.mark.parametrize(
    ("arrays_change", "error", "reason"),
    [
        ({"fc.bias": np.zeros(11, np.float32)}, ModelSpecMismatch, "shape_mismatch"),
        ({"fc.bias": np.full(10, np.nan, np.float32)}, NonFiniteValues, "non_finite"),
        ({"extra": np.zeros(1, np.float32)}, ModelSpecMismatch, "unexpected_tensor"),
    ],
)
def test_malformed_updates_are_refused_inside(
    start_aggregator: AggregatorFactory,
    device_key: SigningKey,
    spec: ModelSpec,
    base_model: bytes,
    arrays_change: dict[str, np.ndarray],
    error: type[Exception],
    reason: str,
) -> None:
    # Prepare
    backend = start_aggregator()
    backend.begin_round(ROUND, base_model, spec)
    bad = dump_arrays({**make_arrays(1), **arrays_change}, {"num_examples": "5"})

    # Execute / Assert
    with pytest.raises(error) as err:
        validate_bytes(backend, ROUND, make_envelope(device_key, backend.public_keys().kem, bad))
    assert err.value.reason == reason  # type: ignore[attr-defined]


def test_an_update_over_the_norm_bound_is_refused_without_revealing_its_norm(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator(config=EnclaveConfig(max_update_norm=1.0))
    backend.begin_round(ROUND, base_model, spec)
    big = dump_arrays(make_arrays(2, scale=10.0), {"num_examples": "5"})

    # Execute / Assert
    with pytest.raises(UpdateRejected) as err:
        validate_bytes(backend, ROUND, make_envelope(device_key, backend.public_keys().kem, big))
    assert err.value.reason == "norm_exceeded"
    assert err.value.message == "update L2 norm exceeds the enclave's bound"


@pytest.mark.parametrize("bad", ["nan_last_value", "norm_over_bound"])
def test_a_refused_update_leaves_the_round_unchanged(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes, bad: str
) -> None:
    # Prepare: NaN in the very last value the step norm's pass reads, or a step over the bound
    backend = start_aggregator(config=EnclaveConfig(max_update_norm=100.0))
    kem = backend.public_keys().kem
    backend.begin_round(ROUND, base_model, spec)
    good = [make_update(seed, num_examples=seed + 1) for seed in range(3)]
    arrays = make_arrays(7, scale=1000.0 if bad == "norm_over_bound" else 1.0)
    arrays[list(arrays)[-1]].reshape(-1)[-1] = np.nan if bad == "nan_last_value" else 0.0
    refused = dump_arrays(arrays, {"num_examples": "9"})
    backend.accumulate(validate_bytes(backend, ROUND, make_envelope(device_key, kem, good[0], device_id="d-0")))

    # Execute
    with pytest.raises((NonFiniteValues, UpdateRejected)) as err:
        validate_bytes(backend, ROUND, make_envelope(device_key, kem, refused, device_id="d-1"))
    # the refused device may still send a good update, and the round goes on
    for i in (1, 2):
        backend.accumulate(validate_bytes(backend, ROUND, make_envelope(device_key, kem, good[i], device_id=f"d-{i}")))
    model = backend.finalize(ROUND)

    # Assert: the refusal's reason, and the model is the aggregate of the good updates alone, byte for byte
    assert err.value.reason == ("non_finite" if bad == "nan_last_value" else "norm_exceeded")  # type: ignore[attr-defined]
    assert model == inprocess_model(base_model, spec, good)


def test_envelopes_for_another_round_or_endpoint_are_refused(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator()
    kem = backend.public_keys().kem
    backend.begin_round(ROUND, base_model, spec)
    other_round = make_envelope(device_key, kem, make_update(1), round_id=ROUND + 1)
    other_path = make_envelope(device_key, kem, make_update(1), path="/v1/device/heartbeat")
    mixed, _ = seal_request(device_key, kem, device_id="d", method="POST", path=f"/v1/device/rounds/{ROUND}/update",
                            round_id=ROUND + 1, payload=make_update(1), now=time.time())  # fmt: skip

    # Execute / Assert
    for envelope, reason in ((other_round, "not_an_update"), (other_path, "not_an_update"), (mixed, "round_mismatch")):
        with pytest.raises(InvalidInput) as err:
            validate_bytes(backend, ROUND, envelope)
        assert err.value.reason == reason


def test_qkd_only_envelopes_are_refused_by_the_enclave_policy(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare: the QKD key reaches the enclave through the host, so the host could read such a request
    backend = start_aggregator()
    backend.begin_round(ROUND, base_model, spec)
    qkd_key = b"q" * 32
    envelope = make_envelope(device_key, backend.public_keys().kem, make_update(1), key_source="qkd", qkd_key=qkd_key)
    hybrid = make_envelope(device_key, backend.public_keys().kem, make_update(2), key_source="hybrid", qkd_key=qkd_key)

    # Execute
    with pytest.raises(PermissionDenied) as err:
        backend.validate_envelope(ROUND, envelope, allowed_key_sources={"qkd"}, extra_secret=qkd_key)
    accepted = backend.validate_envelope(ROUND, hybrid, allowed_key_sources={"hybrid"}, extra_secret=qkd_key)
    backend.accumulate(accepted)
    backend.close()
    replayed = start_aggregator(backend.enclave.launcher.work_dir)  # type: ignore[attr-defined]
    replayed.begin_round(ROUND, base_model, spec)
    replayed.replay(ROUND, accepted.stored)

    # Assert
    assert err.value.reason == "key_source_not_allowed"
    assert replayed.finalize(ROUND) == inprocess_model(base_model, spec, [make_update(2)])


def test_a_tampered_envelope_does_not_decrypt(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator()
    backend.begin_round(ROUND, base_model, spec)
    envelope = bytearray(make_envelope(device_key, backend.public_keys().kem, make_update(1)))
    envelope[-4000] ^= 0x01  # inside the encrypted body

    # Execute / Assert
    with pytest.raises(DecryptionFailed):
        validate_bytes(backend, ROUND, bytes(envelope))


def test_finalize_without_updates_and_unknown_rounds_are_refused(
    start_aggregator: AggregatorFactory, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator(inputs="plaintext")
    backend.begin_round(ROUND, base_model, spec)

    # Execute / Assert
    with pytest.raises(AggregationError) as empty:
        backend.finalize(ROUND)
    with pytest.raises(NotFound):
        validate_bytes(backend, ROUND + 5, make_update(1))
    backend.abort_round(ROUND)
    with pytest.raises(NotFound):
        validate_bytes(backend, ROUND, make_update(1))
    assert empty.value.reason == "no_updates"


def test_upload_responses_are_sealed_once_for_the_device(
    start_aggregator: AggregatorFactory, device_key: SigningKey, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator()
    backend.begin_round(ROUND, base_model, spec)
    envelope, opener = seal_request(device_key, backend.public_keys().kem, device_id="dev-1", method="POST",
                                    path=f"/v1/device/rounds/{ROUND}/update", round_id=ROUND,
                                    payload=make_update(1), now=time.time())  # fmt: skip
    handle = validate_bytes(backend, ROUND, envelope).handle
    reply = json.dumps({"accepted": True}).encode()

    # Execute
    response = backend.seal_response(handle.request_hash, reply)

    # Assert
    assert opener.open(response) == reply
    with pytest.raises(NotFound) as again:
        backend.seal_response(handle.request_hash, reply)
    assert again.value.reason == "unknown_request"


def test_small_requests_open_inside_but_update_payloads_never_leave(
    start_aggregator: AggregatorFactory, device_key: SigningKey
) -> None:
    # Prepare
    backend = start_aggregator()
    kem = backend.public_keys().kem
    task_request, opener = seal_request(device_key, kem, device_id="dev-7", method="POST", path="/v1/device/task",
                                        round_id=None, payload=b'{"want":"task"}', now=time.time())  # fmt: skip
    update_request = make_envelope(device_key, kem, make_update(1))

    # Execute
    opened = backend.open_request(task_request)
    response = backend.seal_response(opened.request_hash, b'{"status":"wait"}')

    # Assert
    assert (opened.payload, opened.device_id, opened.path) == (b'{"want":"task"}', "dev-7", "/v1/device/task")
    assert opener.open(response) == b'{"status":"wait"}'
    with pytest.raises(PermissionDenied) as err:
        backend.open_request(update_request)
    assert err.value.reason == "update_payload_stays_inside"


def test_round_tasks_are_signed_only_for_the_round_base_model(
    start_aggregator: AggregatorFactory, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare
    backend = start_aggregator()
    backend.begin_round(ROUND, base_model, spec)
    task = RoundTask(round_id=ROUND, model_sha256=sha256_hex(base_model), deadline_at=1_700_000_123.456)
    key = backend.public_keys().signing

    # Execute
    signature = backend.sign_task(task)

    # Assert
    verify_task_signature(task, signature, enclave_key=key)
    with pytest.raises(InvalidSignature) as later:
        verify_task_signature(RoundTask(ROUND, task.model_sha256, task.deadline_at + 60), signature, enclave_key=key)
    assert later.value.reason == "bad_task_signature"
    with pytest.raises(PermissionDenied) as other_model:
        backend.sign_task(RoundTask(ROUND, "0" * 64, task.deadline_at))
    assert other_model.value.reason == "task_model_mismatch"
    with pytest.raises(NotFound):
        backend.sign_task(RoundTask(ROUND + 1, task.model_sha256, task.deadline_at))
