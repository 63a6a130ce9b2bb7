"""C2SP tlog-cosignature v1 (signature type 0x04) and a k-of-n witness policy.

A witness cosigns a checkpoint by signing, with Ed25519::

    "cosignature/v1\\n" || "time " || <decimal UNIX seconds> || "\\n" || <checkpoint body>

The note signature is ``key ID (4) || timestamp (uint64 big-endian, 8) || Ed25519 signature (64)``;
the key ID is ``SHA-256(name || 0x0A || 0x04 || pub)[:4]``. The type byte in the key ID separates a
cosignature from a plain Ed25519 note signature by the same key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from qflare.crypto._ed25519_note import Ed25519Signer, Ed25519Verifier
from qflare.crypto.secret_access import SecretKeyAccess, require_token
from qflare.errors import InvalidSignature, LedgerIntegrityError
from qflare.ledger.note import NoteSignature, NoteVerifier, _KeyedVerifier, parse_note

__all__ = [
    "COSIGNATURE_TYPE",
    "Cosignature",
    "CosignatureSigner",
    "CosignatureVerifier",
    "WitnessPolicy",
    "WitnessQuorumError",
    "WitnessReport",
    "cosignature_timestamp",
    "cosigned_message",
]

COSIGNATURE_TYPE: Final = 0x04
_PAYLOAD_SIZE: Final = 8 + 64


def cosigned_message(body: bytes, timestamp: int) -> bytes:
    """``"cosignature/v1\\ntime <T>\\n" || body`` — the bytes a witness signs."""
    if not 0 <= timestamp < 2**64:
        raise LedgerIntegrityError("timestamp out of range", reason="bad_timestamp")
    return b"cosignature/v1\ntime %d\n" % timestamp + bytes(body)


def cosignature_timestamp(signature_b64: str) -> int:
    """The timestamp inside a base64 cosignature payload (``key ID || u64 || sig``, 76 bytes).

    Raises
    ------
    LedgerIntegrityError
        ``malformed_cosignature`` if it is not base64 or not 76 bytes.
    """
    try:
        raw = base64.b64decode(signature_b64.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise LedgerIntegrityError("cosignature is not base64", reason="malformed_cosignature") from None
    if len(raw) != 4 + _PAYLOAD_SIZE:
        raise LedgerIntegrityError("cosignature must be 76 bytes", reason="malformed_cosignature")
    return int.from_bytes(raw[4:12], "big")


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A verified cosignature: who (``name``, ``key_id``) and when (``timestamp``, UNIX seconds)."""

    name: str
    key_id: int
    timestamp: int


class CosignatureVerifier(_KeyedVerifier):
    """A witness's cosignature/v1 verifier key (type 0x04); also a :class:`NoteVerifier`.

    Parameters
    ----------
    name:
        The witness key name.
    public_key:
        Its 32-byte Ed25519 public key.
    """

    sig_type = COSIGNATURE_TYPE

    def __init__(self, name: str, public_key: bytes) -> None:
        self._bind(name, Ed25519Verifier, public_key)

    def verify(self, text: bytes, signature: bytes) -> None:
        self.verify_cosignature(text, signature)

    def verify_cosignature(self, text: bytes, signature: bytes) -> Cosignature:
        """Verify ``timestamp || sig`` over ``text``; return who and when.

        Raises
        ------
        LedgerIntegrityError
            ``invalid_signature`` (wrong length or does not verify).
        """
        if len(signature) != _PAYLOAD_SIZE:
            raise LedgerIntegrityError(
                f"invalid signature for key {self._name}+{self._id:08x}", reason="invalid_signature"
            )
        ts = int.from_bytes(signature[:8], "big")
        try:
            self._key.verify(signature[8:], cosigned_message(text, ts))
        except InvalidSignature:
            raise LedgerIntegrityError(
                f"invalid signature for key {self._name}+{self._id:08x}", reason="invalid_signature"
            ) from None
        return Cosignature(self._name, self._id, ts)


class CosignatureSigner:
    """A local witness key producing cosignature/v1 lines (tests, tooling and :mod:`qflare.ledger.witness`).

    Parameters
    ----------
    name:
        The witness key name.
    seed:
        32-byte Ed25519 seed.
    token:
        ``secret_access.TOKEN``.
    """

    def __init__(self, name: str, seed: bytes, token: SecretKeyAccess) -> None:
        require_token(token)
        self._key = Ed25519Signer(seed, token)
        self._verifier = CosignatureVerifier(name, self._key.public_bytes())

    def verifier(self) -> CosignatureVerifier:
        """The matching verifier."""
        return self._verifier

    def cosign(self, body: bytes, timestamp: int) -> NoteSignature:
        """The cosignature line over checkpoint ``body`` at ``timestamp``."""
        sig = self._key.sign(cosigned_message(body, timestamp))
        return NoteSignature(self._verifier.name, self._verifier.key_id, timestamp.to_bytes(8, "big") + sig)


@dataclass(frozen=True, slots=True)
class WitnessReport:
    """Outcome of a witness policy check: the cosignatures that counted, and the signature lines from
    keys the policy does not know (ignored for counting, reported)."""

    cosignatures: list[Cosignature] = field(default_factory=list)
    unknown: list[NoteSignature] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.cosignatures)


class WitnessPolicy:
    """``threshold``-of-``len(witnesses)`` cosignature policy over a checkpoint note.

    Parameters
    ----------
    witnesses:
        The trusted witness keys.
    threshold:
        How many distinct trusted witnesses must have cosigned (1 <= threshold <= len(witnesses)).
    """

    def __init__(self, witnesses: Sequence[CosignatureVerifier], threshold: int) -> None:
        if not 1 <= threshold <= len(witnesses):
            raise ValueError("threshold must be between 1 and the number of witnesses")
        self._witnesses = {(w.name, w.key_id): w for w in witnesses}
        self._threshold = threshold

    @property
    def threshold(self) -> int:
        return self._threshold

    def check(self, msg: bytes, log_verifiers: Iterable[NoteVerifier] = ()) -> WitnessReport:
        """Count valid cosignatures from trusted witnesses on the note ``msg``.

        Signature lines from the log's own keys (``log_verifiers``) are not reported as unknown. A
        line from a trusted witness that fails to verify rejects the note (it is a forgery, not noise).

        Raises
        ------
        LedgerIntegrityError
            ``malformed_note``, ``invalid_signature``, or ``witness_quorum_not_met``.
        """
        text, sigs = parse_note(msg)
        own = {(v.name, v.key_id) for v in log_verifiers}
        counted: dict[tuple[str, int], Cosignature] = {}
        unknown: list[NoteSignature] = []
        for sig in sigs:
            ident = (sig.name, sig.key_id)
            witness = self._witnesses.get(ident)
            if witness is None:
                if ident not in own:
                    unknown.append(sig)
                continue
            cosig = witness.verify_cosignature(text, sig.signature)
            counted.setdefault(ident, cosig)
        report = WitnessReport(list(counted.values()), unknown)
        if report.count < self._threshold:
            raise WitnessQuorumError(report, self._threshold)
        return report


class WitnessQuorumError(LedgerIntegrityError):
    """Fewer than ``threshold`` trusted cosignatures (``reason`` ``witness_quorum_not_met``);
    ``report`` says which counted and which lines were from unknown keys."""

    def __init__(self, report: WitnessReport, threshold: int) -> None:
        super().__init__(
            f"{report.count} of the required {threshold} witness cosignatures", reason="witness_quorum_not_met"
        )
        self.report = report
        self.threshold = threshold
