"""Edge-side checks: a global model or task whose signature does not verify is refused."""

from __future__ import annotations

import pytest

from qflare.crypto.signing import SigningKey
from qflare.enclave.statements import (
    RoundTask,
    sign_model,
    sign_task,
    verify_model_signature,
    verify_task_signature,
)
from qflare.errors import InvalidSignature

MODEL = b"safetensors bytes of a global model"


def test_a_model_signature_verifies_for_those_bytes_and_that_round() -> None:
    # Prepare
    key = SigningKey.generate()

    # Execute
    signature = sign_model(4, MODEL, key)

    # Assert
    verify_model_signature(MODEL, signature, enclave_key=key.public_key(), round_id=4)


@pytest.mark.parametrize("change", ["bytes", "round", "key", "signature"])
def test_a_model_whose_signature_does_not_verify_is_refused(change: str) -> None:
    # Prepare
    key = SigningKey.generate()
    signature = bytearray(sign_model(4, MODEL, key))
    model, round_id, verify_key = MODEL, 4, key.public_key()
    if change == "bytes":
        model = MODEL[:-1] + b"!"
    elif change == "round":
        round_id = 5
    elif change == "key":
        verify_key = SigningKey.generate().public_key()
    else:
        signature[100] ^= 0x01

    # Execute / Assert
    with pytest.raises(InvalidSignature) as err:
        verify_model_signature(model, bytes(signature), enclave_key=verify_key, round_id=round_id)
    assert err.value.reason == "bad_model_signature"


def test_a_task_signature_does_not_pass_as_a_model_signature() -> None:
    # Prepare: the signing contexts differ, so one statement type cannot stand in for another
    key = SigningKey.generate()
    task = RoundTask(round_id=4, model_sha256="ab" * 32, deadline_at=10.0)

    # Execute
    signature = sign_task(task, key)

    # Assert
    verify_task_signature(task, signature, enclave_key=key.public_key())
    with pytest.raises(InvalidSignature):
        verify_model_signature(MODEL, signature, enclave_key=key.public_key(), round_id=4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"round_id": -1, "model_sha256": "ab" * 32, "deadline_at": 1.0},
        {"round_id": 1, "model_sha256": "AB" * 32, "deadline_at": 1.0},
        {"round_id": 1, "model_sha256": "ab" * 32, "deadline_at": float("nan")},
    ],
)
def test_malformed_tasks_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RoundTask(**kwargs)  # type: ignore[arg-type]
