"""The enclave checks what it aggregates: device signatures against its own operator-signed registry, and
the base model against the chain of models it signed. Every call here goes to the enclave directly
(no gateway): the host forwards whatever it likes, and the enclave itself refuses."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from qflare.crypto.signing import SigningKey
from qflare.enclave.backend import EnclaveAggregator
from qflare.enclave.config import EnclaveConfig
from qflare.enclave.operator import DeviceRegistrar, OperatorKey, registration_for
from qflare.enclave.registry import DeviceRegistration, sign_registration
from qflare.enclave.statements import verify_model_signature
from qflare.errors import (
    AggregationError,
    ConfigError,
    EnclaveError,
    InvalidInput,
    InvalidSignature,
    PermissionDenied,
    ReplayDetected,
)
from qflare.fl.serialize import dump_arrays
from qflare.fl.spec import ModelSpec
from tests.enclave.conftest import validate_bytes
from tests.enclave.test_backend import inprocess_model

from .conftest import ROUND, SHAPES, AggregatorFactory, make_envelope, make_update


@pytest.fixture(scope="module")
def operator() -> SigningKey:
    return SigningKey.generate()


def registered_config(operator: SigningKey, **kw: object) -> EnclaveConfig:
    return EnclaveConfig(operator_key=operator.public_key().to_bytes().hex(), **kw)  # type: ignore[arg-type]


def registration(device_id: str, key: SigningKey, *, status: str = "active", sequence: int = 1) -> DeviceRegistration:
    return DeviceRegistration(device_id=device_id, public_key=key.public_key().to_bytes(), key_source="mlkem",
                              status=status, sequence=sequence)


def register(backend: EnclaveAggregator, reg: DeviceRegistration, operator: SigningKey) -> None:
    backend.register_device(reg.to_bytes(), sign_registration(reg, operator))


def other_model() -> bytes:
    return dump_arrays({name: np.ones(shape, np.float32) for name, shape in SHAPES.items()}, {"round_id": "0"})


def test_a_registered_device_s_update_is_counted(
    start_aggregator: AggregatorFactory, operator: SigningKey, device_key: SigningKey, spec: ModelSpec,
    base_model: bytes,
) -> None:
    # Prepare
    backend = start_aggregator(config=registered_config(operator))
    register(backend, registration("dev-1", device_key), operator)
    backend.begin_round(ROUND, base_model, spec)

    # Execute
    backend.accumulate(validate_bytes(backend, ROUND, make_envelope(device_key, backend.public_keys().kem,
                                                                     make_update(1))))
    model = backend.finalize(ROUND)

    # Assert
    verify_model_signature(model, backend.model_signature(ROUND), enclave_key=backend.public_keys().signing,
                           round_id=ROUND)


def test_an_update_signed_by_a_key_the_enclave_does_not_know_is_refused_inside(
    start_aggregator: AggregatorFactory, operator: SigningKey, device_key: SigningKey, spec: ModelSpec,
    base_model: bytes,
) -> None:
    # Prepare: dev-1 is enrolled; the host forges an envelope for dev-1 with its own key, and one for a
    # device nobody enrolled, and forwards both straight to the enclave
    backend = start_aggregator(config=registered_config(operator))
    register(backend, registration("dev-1", device_key), operator)
    backend.begin_round(ROUND, base_model, spec)
    kem = backend.public_keys().kem
    host_key = SigningKey.generate()

    # Execute / Assert
    with pytest.raises(InvalidSignature) as forged:
        validate_bytes(backend, ROUND, make_envelope(host_key, kem, make_update(1), device_id="dev-1"))
    with pytest.raises(PermissionDenied) as unknown:
        validate_bytes(backend, ROUND, make_envelope(host_key, kem, make_update(2), device_id="sybil-7"))
    assert forged.value.reason == "enclave_bad_signature"
    assert unknown.value.reason == "enclave_unknown_device"
    with pytest.raises(AggregationError):  # nothing was counted
        backend.finalize(ROUND)


def test_a_revoked_device_s_update_is_refused_inside(
    start_aggregator: AggregatorFactory, operator: SigningKey, device_key: SigningKey, spec: ModelSpec,
    base_model: bytes,
) -> None:
    # Prepare
    backend = start_aggregator(config=registered_config(operator))
    register(backend, registration("dev-1", device_key, sequence=1), operator)
    register(backend, registration("dev-1", device_key, status="revoked", sequence=2), operator)
    backend.begin_round(ROUND, base_model, spec)

    # Execute / Assert
    with pytest.raises(PermissionDenied) as err:
        validate_bytes(backend, ROUND, make_envelope(device_key, backend.public_keys().kem, make_update(1)))
    assert err.value.reason == "enclave_device_revoked"


def test_the_host_can_neither_sign_nor_roll_back_registrations(
    start_aggregator: AggregatorFactory, operator: SigningKey, device_key: SigningKey,
) -> None:
    # Prepare
    backend = start_aggregator(config=registered_config(operator))
    active = registration("dev-1", device_key, sequence=1)
    revoked = registration("dev-1", device_key, status="revoked", sequence=2)
    register(backend, active, operator)
    register(backend, revoked, operator)

    # Execute / Assert: a statement signed by another key, a revocation passed off as an enrolment
    # (context), and the older enrolment re-sent are all refused
    with pytest.raises(InvalidSignature) as foreign:
        register(backend, registration("dev-2", device_key), SigningKey.generate())
    enrol = registration("dev-2", device_key, sequence=5)
    with pytest.raises(InvalidSignature) as context:
        backend.register_device(
            registration("dev-2", device_key, status="revoked", sequence=5).to_bytes(),
            sign_registration(enrol, operator),
        )
    with pytest.raises(InvalidInput) as stale:
        register(backend, active, operator)
    register(backend, revoked, operator)  # the same statement again (a restart's re-send) is fine
    assert foreign.value.reason == context.value.reason == "bad_registration_signature"
    assert stale.value.reason == "stale_registration"


def test_plaintext_updates_are_refused_when_the_enclave_checks_devices(
    start_aggregator: AggregatorFactory, operator: SigningKey, spec: ModelSpec, base_model: bytes,
) -> None:
    backend = start_aggregator(config=registered_config(operator), inputs="plaintext")
    backend.begin_round(ROUND, base_model, spec)
    with pytest.raises(PermissionDenied) as err:
        validate_bytes(backend, ROUND, make_update(1))
    assert err.value.reason == "envelope_required"


def test_an_envelope_is_validated_once_per_round(
    start_aggregator: AggregatorFactory, operator: SigningKey, device_key: SigningKey, spec: ModelSpec,
    base_model: bytes,
) -> None:
    # Prepare
    backend = start_aggregator(config=registered_config(operator))
    register(backend, registration("dev-1", device_key), operator)
    backend.begin_round(ROUND, base_model, spec)
    envelope = make_envelope(device_key, backend.public_keys().kem, make_update(1))
    backend.accumulate(validate_bytes(backend, ROUND, envelope))

    # Execute / Assert: the host forwards the same envelope again (a new update id each time otherwise)
    with pytest.raises(ReplayDetected) as err:
        validate_bytes(backend, ROUND, envelope)
    assert err.value.reason == "enclave_replayed_envelope"


def test_a_host_swapped_base_model_is_refused(
    start_aggregator: AggregatorFactory, spec: ModelSpec, base_model: bytes, device_key: SigningKey,
) -> None:
    # Prepare: round 3 runs on the version-0 model and produces a signed model
    backend = start_aggregator()
    backend.begin_round(ROUND, base_model, spec)
    backend.accumulate(validate_bytes(backend, ROUND, make_envelope(device_key, backend.public_keys().kem,
                                                                     make_update(1))))
    signed = backend.finalize(ROUND)

    # Execute / Assert: the next round on anything but that model (another, or the old one) is refused
    for swapped in (other_model(), base_model):
        with pytest.raises(PermissionDenied) as err:
            backend.begin_round(ROUND + 1, swapped, spec)
        assert err.value.reason == "base_model_not_signed"
    backend.begin_round(ROUND + 1, signed, spec)  # the chain continues


def test_the_initial_model_is_signed_once_and_then_required(
    start_aggregator: AggregatorFactory, spec: ModelSpec, base_model: bytes,
) -> None:
    # Prepare
    backend = start_aggregator()

    # Execute
    signature = backend.sign_initial_model(base_model)
    again = backend.sign_initial_model(base_model)  # idempotent until a round's result is signed

    # Assert
    key = backend.public_keys().signing
    verify_model_signature(base_model, signature, enclave_key=key, round_id=0)
    verify_model_signature(base_model, again, enclave_key=key, round_id=0)
    with pytest.raises(PermissionDenied) as err:
        backend.sign_initial_model(other_model())
    assert err.value.reason == "initial_model_already_signed"
    with pytest.raises(PermissionDenied):
        backend.begin_round(ROUND, other_model(), spec)


def test_registry_and_chain_survive_a_restart_and_deleting_them_is_refused(
    tmp_path: Path, start_aggregator: AggregatorFactory, operator: SigningKey, device_key: SigningKey,
    spec: ModelSpec, base_model: bytes,
) -> None:
    # Prepare: a first enclave enrols dev-1, revokes dev-2 and signs one round's model
    work = tmp_path / "enclave"
    config = registered_config(operator)
    first = start_aggregator(work, config=config)
    register(first, registration("dev-1", device_key), operator)
    register(first, registration("dev-2", device_key, status="revoked", sequence=3), operator)
    first.begin_round(ROUND, base_model, spec)
    first.accumulate(validate_bytes(first, ROUND, make_envelope(device_key, first.public_keys().kem, make_update(1))))
    signed = first.finalize(ROUND)
    first.close()

    # Execute: a new process on the same sealed state, told nothing by the host
    second = start_aggregator(work, config=config)
    kem = second.public_keys().kem
    with pytest.raises(PermissionDenied) as swapped:
        second.begin_round(ROUND + 1, base_model, spec)
    second.begin_round(ROUND + 1, signed, spec)
    second.accumulate(validate_bytes(second, ROUND + 1, make_envelope(device_key, kem, make_update(2),
                                                                       round_id=ROUND + 1)))
    with pytest.raises(PermissionDenied) as revoked:
        validate_bytes(second, ROUND + 1, make_envelope(device_key, kem, make_update(3), round_id=ROUND + 1,
                                                         device_id="dev-2"))
    with pytest.raises(InvalidInput) as stale:  # the host cannot undo the revocation after the restart
        register(second, registration("dev-2", device_key, sequence=2), operator)
    second.close()
    for sealed in (work / "state").glob("registry-*.sealed"):
        sealed.unlink()
    third = start_aggregator(work, config=config)

    # Assert
    assert swapped.value.reason == "base_model_not_signed"
    assert revoked.value.reason == "enclave_device_revoked"
    assert stale.value.reason == "stale_registration"
    with pytest.raises(EnclaveError) as missing:
        third.begin_round(ROUND + 2, signed, spec)
    assert missing.value.reason == "enclave_state_missing"


def test_the_restart_of_a_killed_enclave_keeps_checking_devices(
    tmp_path: Path, start_aggregator: AggregatorFactory, operator: SigningKey, device_key: SigningKey,
    spec: ModelSpec, base_model: bytes,
) -> None:
    # Prepare: the host side registrar follows a record store (as the server's repository)
    records: dict[str, _Record] = {"dev-1": _Record("dev-1", device_key.public_key().to_bytes())}
    key_dir = tmp_path / "keys"
    op = OperatorKey.load_or_create(key_dir)
    backend = start_aggregator(config=EnclaveConfig(operator_key=op.public_hex))
    backend.registrar = DeviceRegistrar(op, records.get)
    backend.begin_round(ROUND, base_model, spec)
    kem = backend.public_keys().kem
    backend.accumulate(validate_bytes(backend, ROUND, make_envelope(device_key, kem, make_update(1))))

    # Execute: the enclave process dies; the device is revoked on the server meanwhile
    pid = backend.enclave.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while backend.enclave.running and time.monotonic() < deadline:
        time.sleep(0.01)
    records["dev-1"] = _Record("dev-1", device_key.public_key().to_bytes(), status="revoked", revoked_at=2000.0)
    with pytest.raises(PermissionDenied) as err:
        validate_bytes(backend, ROUND, make_envelope(device_key, kem, make_update(2)))

    # Assert: the round came back with its one update, and the revocation reached the enclave
    assert err.value.reason == "enclave_device_revoked"
    assert backend.enclave.restarts == 1
    assert backend.finalize(ROUND) == inprocess_model(base_model, spec, [make_update(1)])
    assert (key_dir / "operator.key").stat().st_mode & 0o777 == 0o600
    assert OperatorKey.load_or_create(key_dir).public_hex == op.public_hex
    assert registration_for(records["dev-1"]).sequence > registration_for(
        _Record("dev-1", device_key.public_key().to_bytes())).sequence


def test_the_operator_key_in_the_config_must_be_a_composite_key() -> None:
    with pytest.raises(ConfigError):
        EnclaveConfig(operator_key="00" * 32)
    with pytest.raises(ConfigError):
        EnclaveConfig(operator_key="not hex")


class _Record:
    def __init__(self, device_id: str, public_key: bytes, *, status: str = "active",
                 revoked_at: float | None = None) -> None:
        self.device_id, self.public_key, self.key_source = device_id, public_key, "mlkem"
        self.status, self.created_at, self.revoked_at = status, 1000.0, revoked_at
        self.max_examples: int | None = None


def test_an_update_claiming_more_examples_than_enrolled_is_refused_inside(
    start_aggregator: AggregatorFactory, operator: SigningKey, device_key: SigningKey, spec: ModelSpec,
    base_model: bytes,
) -> None:
    # Prepare: dev-1 enrolled (operator-signed) for at most 50 examples per update
    backend = start_aggregator(config=registered_config(operator))
    capped = DeviceRegistration(device_id="dev-1", public_key=device_key.public_key().to_bytes(),
                                key_source="mlkem", status="active", sequence=1, max_examples=50)
    register(backend, capped, operator)
    backend.begin_round(ROUND, base_model, spec)
    kem = backend.public_keys().kem

    # Execute: the host forwards an inflated claim (10^7 examples)
    with pytest.raises(InvalidInput) as info:
        validate_bytes(backend, ROUND, make_envelope(device_key, kem, make_update(1, num_examples=10**7)))

    # Assert: refused with its reason, nothing counted; a claim at the cap is counted
    assert info.value.reason == "num_examples_above_cap" and "at most 50" in info.value.message
    backend.accumulate(validate_bytes(backend, ROUND, make_envelope(device_key, kem, make_update(2, num_examples=50))))
    assert backend.finalize(ROUND) == inprocess_model(base_model, spec, [make_update(2, num_examples=50)])


@pytest.mark.parametrize("cap", [0, -1, True, 2**31, "50"])
def test_a_registration_with_a_bad_example_cap_is_refused(device_key: SigningKey, cap: object) -> None:
    with pytest.raises(InvalidInput) as info:
        DeviceRegistration(device_id="dev-1", public_key=device_key.public_key().to_bytes(), key_source="mlkem",
                           status="active", sequence=1, max_examples=cap)  # type: ignore[arg-type]
    assert info.value.reason == "bad_registration"


def test_the_example_cap_is_part_of_the_signed_statement(device_key: SigningKey, operator: SigningKey) -> None:
    from qflare.enclave.registry import verify_registration

    plain = registration("dev-1", device_key)
    capped = DeviceRegistration(device_id="dev-1", public_key=device_key.public_key().to_bytes(),
                                key_source="mlkem", status="active", sequence=1, max_examples=50)
    assert b"max_examples" not in plain.to_bytes() and b'"max_examples":50' in capped.to_bytes()
    assert DeviceRegistration.from_bytes(capped.to_bytes()) == capped
    # The host cannot lift the cap: the signature over the capped statement does not cover the plain one.
    with pytest.raises(InvalidSignature):
        verify_registration(plain.to_bytes(), sign_registration(capped, operator), operator_key=operator.public_key())
