"""What the enclave signs for edge nodes: round tasks and new global models, and how to verify them.

Both are canonical JSON statements signed with the enclave's composite key (ML-DSA-65 + Ed25519),
each in its own signing context::

    task  = {"type": "qflare.round-task/1",   "round_id": int, "model_sha256": hex, "deadline_ms": int}
    model = {"type": "qflare.global-model/1", "round_id": int, "model_sha256": hex}

An edge node verifies the task before training and the model before loading it, with the enclave
signing key it got from a verified quote (:func:`qflare.enclave.verify.verify_quote`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Final

from qflare.crypto.signing import SigningContext, SigningKey, VerifyKey
from qflare.errors import InvalidSignature

__all__ = [
    "RoundTask",
    "model_statement",
    "sign_model",
    "sign_task",
    "verify_model_signature",
    "verify_task_signature",
]

_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_MAX_ROUND: Final = 2**63 - 1


def _check_round(round_id: int) -> int:
    if isinstance(round_id, bool) or not isinstance(round_id, int) or not 0 <= round_id <= _MAX_ROUND:
        raise ValueError("round_id must be a non-negative integer")
    return round_id


def _check_sha(model_sha256: str) -> str:
    if not isinstance(model_sha256, str) or not _HEX64.fullmatch(model_sha256):
        raise ValueError("model_sha256 must be 64 lower-case hex digits")
    return model_sha256


def _canonical(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


@dataclass(frozen=True)
class RoundTask:
    """A round task: train on the global model with this hash, for this round, before the deadline.

    Parameters
    ----------
    round_id:
        The round.
    model_sha256:
        Hex SHA-256 of the global model bytes the round starts from.
    deadline_at:
        Unix time in seconds; signed as whole milliseconds.
    """

    round_id: int
    model_sha256: str
    deadline_at: float

    def __post_init__(self) -> None:
        _check_round(self.round_id)
        _check_sha(self.model_sha256)
        if isinstance(self.deadline_at, bool) or not isinstance(self.deadline_at, int | float):
            raise ValueError("deadline_at must be a number")
        if not math.isfinite(self.deadline_at) or self.deadline_at < 0:
            raise ValueError("deadline_at must be a finite, non-negative Unix time")

    @property
    def deadline_ms(self) -> int:
        """The deadline in whole milliseconds, as signed."""
        return int(round(self.deadline_at * 1000))

    def to_bytes(self) -> bytes:
        """The canonical statement that gets signed."""
        return _canonical(
            {
                "type": "qflare.round-task/1",
                "round_id": self.round_id,
                "model_sha256": self.model_sha256,
                "deadline_ms": self.deadline_ms,
            }
        )


def model_statement(round_id: int, model_sha256: str) -> bytes:
    """The canonical statement signed for the global model produced by ``round_id``."""
    return _canonical(
        {"type": "qflare.global-model/1", "round_id": _check_round(round_id), "model_sha256": _check_sha(model_sha256)}
    )


def sign_task(task: RoundTask, key: SigningKey) -> bytes:
    """Sign a round task (inside the enclave)."""
    return key.sign(task.to_bytes(), SigningContext.TASK)


def sign_model(round_id: int, model: bytes, key: SigningKey) -> bytes:
    """Sign the global model bytes produced by ``round_id`` (inside the enclave)."""
    return key.sign(model_statement(round_id, hashlib.sha256(model).hexdigest()), SigningContext.GLOBAL_MODEL)


def verify_task_signature(task: RoundTask, signature: bytes, *, enclave_key: VerifyKey) -> None:
    """Return ``None`` if the enclave signed ``task``.

    Raises
    ------
    InvalidSignature
        ``reason="bad_task_signature"``.
    """
    try:
        enclave_key.verify(signature, task.to_bytes(), SigningContext.TASK)
    except InvalidSignature:
        raise InvalidSignature("round task signature does not verify", reason="bad_task_signature") from None


def verify_model_signature(model: bytes, signature: bytes, *, enclave_key: VerifyKey, round_id: int) -> None:
    """Return ``None`` if the enclave signed these exact model bytes as the result of ``round_id``.

    Call before loading a global model.

    Raises
    ------
    InvalidSignature
        ``reason="bad_model_signature"``: other bytes, another round, or another key.
    """
    statement = model_statement(round_id, hashlib.sha256(bytes(model)).hexdigest())
    try:
        enclave_key.verify(signature, statement, SigningContext.GLOBAL_MODEL)
    except InvalidSignature:
        raise InvalidSignature("global model signature does not verify", reason="bad_model_signature") from None
