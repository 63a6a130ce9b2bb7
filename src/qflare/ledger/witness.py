"""Pure witness logic (C2SP tlog-witness) and the add-checkpoint request/response bodies.

A witness remembers, per log origin, the last checkpoint it cosigned. Given a new checkpoint and a
consistency proof from the old size, it verifies the log's signature, refuses rollbacks and forks,
verifies the proof, and cosigns (:mod:`qflare.ledger.cosignature`). The HTTP server around it is
not here: it only has to call :func:`add_checkpoint` with the parsed body and map the errors:

- ``old_size_mismatch`` -> 409 Conflict with body ``"<latest size>\\n"``
  (``text/x.tlog.size``; :class:`WitnessConflict` carries ``latest_size``);
- ``unknown_log`` -> 404; ``malformed_request`` / ``old_size_beyond_checkpoint`` -> 400;
- ``invalid_signature`` / ``no_verifiable_signatures`` / ``missing_signature_half`` -> 403;
- ``checkpoint_fork`` -> 409; ``inconsistent_checkpoint`` (the proof fails) -> 422.

Request body (``POST /add-checkpoint``)::

    old <size>\\n
    <base64 proof hash>\\n      (zero to 63 lines)
    \\n
    <signed checkpoint note>

Response body: the cosignature line(s), each ``— <name> <base64>\\n``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from qflare.errors import Conflict, InvalidInput, LedgerIntegrityError
from qflare.ledger.checkpoint import Checkpoint, open_checkpoint
from qflare.ledger.cosignature import CosignatureSigner
from qflare.ledger.merkle import HASH_SIZE, verify_consistency
from qflare.ledger.note import HybridLogKey, NoteSignature, NoteVerifier

__all__ = [
    "MAX_PROOF_LINES",
    "AddCheckpointRequest",
    "WitnessConflict",
    "WitnessState",
    "add_checkpoint",
    "format_add_checkpoint_request",
    "format_add_checkpoint_response",
    "parse_add_checkpoint_request",
    "parse_add_checkpoint_response",
]

MAX_PROOF_LINES: Final = 63


@dataclass(frozen=True, slots=True)
class AddCheckpointRequest:
    """A parsed add-checkpoint body: the size the client thinks the witness has (``old_size``), the
    consistency ``proof`` from it, and the signed ``checkpoint`` note."""

    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: bytes


@dataclass(frozen=True, slots=True)
class WitnessState:
    """What the witness keeps per log: the last cosigned checkpoint (parsed) and its note bytes."""

    checkpoint: Checkpoint
    note: bytes

    @property
    def size(self) -> int:
        return self.checkpoint.size


class WitnessConflict(Conflict):
    """The request's ``old`` size is not the witness's latest (``old_size_mismatch``); reply 409 with
    ``latest_size``."""

    def __init__(self, latest_size: int) -> None:
        super().__init__(f"the witness has size {latest_size}", reason="old_size_mismatch")
        self.latest_size = latest_size


def _malformed(message: str) -> InvalidInput:
    return InvalidInput(message, reason="malformed_request")


def format_add_checkpoint_request(old_size: int, proof: Sequence[bytes], checkpoint: bytes) -> bytes:
    """The add-checkpoint request body."""
    lines = [f"old {old_size}\n".encode()] + [base64.b64encode(p) + b"\n" for p in proof]
    return b"".join(lines) + b"\n" + bytes(checkpoint)


def parse_add_checkpoint_request(body: bytes) -> AddCheckpointRequest:
    """Parse an add-checkpoint request body.

    Raises
    ------
    qflare.errors.InvalidInput
        ``malformed_request``.
    """
    body = bytes(body)
    head, sep, note = body.partition(b"\n\n")
    if not sep or not note:
        raise _malformed("no blank line before the checkpoint")
    lines = head.split(b"\n")
    first = lines[0]
    if not first.startswith(b"old "):
        raise _malformed("the first line must be 'old <size>'")
    digits = first[4:]
    if not digits.isdigit() or (digits.startswith(b"0") and digits != b"0") or int(digits) >= 2**64:
        raise _malformed("old size is not a canonical decimal")
    proof_lines = lines[1:]
    if len(proof_lines) > MAX_PROOF_LINES:
        raise _malformed("too many proof lines")
    proof = []
    for line in proof_lines:
        try:
            h = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise _malformed("proof line is not base64") from None
        if len(h) != HASH_SIZE:
            raise _malformed("proof hash must be 32 bytes")
        proof.append(h)
    return AddCheckpointRequest(int(digits), tuple(proof), note)


def format_add_checkpoint_response(signatures: Sequence[NoteSignature]) -> bytes:
    """The response body: one signature line per cosignature."""
    return b"".join(s.line() for s in signatures)


def parse_add_checkpoint_response(body: bytes) -> list[NoteSignature]:
    """Parse a response body into signature lines (to append to the checkpoint note)."""
    from qflare.ledger.note import parse_note

    _, sigs = parse_note(b"x\n\n" + bytes(body))
    return sigs


def add_checkpoint(
    state: WitnessState | None,
    request: AddCheckpointRequest,
    *,
    origin: str,
    log_key: HybridLogKey | Iterable[NoteVerifier],
    cosigner: CosignatureSigner,
    timestamp: int,
) -> tuple[NoteSignature, WitnessState]:
    """Verify ``request`` against the witness's ``state`` for log ``origin`` and cosign it.

    Returns the cosignature line and the new state to persist (compare-and-swap on the old one:
    two concurrent requests must not both succeed from the same state).

    Raises
    ------
    WitnessConflict
        ``old_size_mismatch``.
    LedgerIntegrityError
        ``checkpoint_fork`` (same size, other root), ``inconsistent_checkpoint``, or any signature /
        parsing reason of :func:`open_checkpoint`.
    qflare.errors.InvalidInput
        ``old_size_beyond_checkpoint`` (a rollback: the checkpoint is older than ``old``).
    """
    if isinstance(log_key, HybridLogKey):
        note = log_key.open(request.checkpoint)
        from qflare.ledger.checkpoint import parse_checkpoint

        cp = parse_checkpoint(note.text, origin=origin)
    else:
        cp, _ = open_checkpoint(request.checkpoint, origin, log_key)
    if request.old_size > cp.size:
        raise InvalidInput(
            f"checkpoint size {cp.size} is below the old size {request.old_size}: rollback refused",
            reason="old_size_beyond_checkpoint",
        )
    latest = 0 if state is None else state.size
    if request.old_size != latest:
        raise WitnessConflict(latest)
    if state is not None and cp.size == state.size:
        if cp.root != state.checkpoint.root:
            raise LedgerIntegrityError("same size, different root: the log forked", reason="checkpoint_fork")
        if request.proof:
            raise LedgerIntegrityError("equal sizes need an empty proof", reason="inconsistent_checkpoint")
    elif state is not None and state.size > 0:
        try:
            verify_consistency(state.size, cp.size, request.proof, state.checkpoint.root, cp.root)
        except LedgerIntegrityError as exc:
            raise LedgerIntegrityError(
                f"not consistent with the cosigned size {state.size}: {exc.message}", reason="inconsistent_checkpoint"
            ) from None
    elif request.proof:
        raise LedgerIntegrityError("a proof from size 0 must be empty", reason="inconsistent_checkpoint")
    body = cp.to_body()
    return cosigner.cosign(body, timestamp), WitnessState(cp, request.checkpoint)
