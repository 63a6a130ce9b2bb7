"""Canonical leaf bytes for QFLARE ledger events (format ``qflare-ledger-entry/v1``).

An entry is::

    b"qflare-ledger-entry/v1\\n" || canonical JSON object

The JSON object has an ``"event"`` member naming the event and one member per field (below), encoded
with sorted keys, no whitespace (separators ``,`` and ``:``), ASCII only (other characters as
``\\uXXXX`` escapes with lowercase hex), and no JSON numbers other than integers in [0, 2**63). Real
numbers (norms, weights, QBER) are JSON *strings* holding Python's shortest round-trip ``repr`` of
the float (``"0.1"``, ``"1e-05"``, ``"12.0"``); NaN and infinities are refused. Optional fields are
``null`` when absent. ``docs/ledger.md`` lists every event byte for byte.

Decoding is strict: the version line, the event name, the exact member set, each member's type, and
byte-for-byte canonical form are all checked, and anything else raises
:class:`qflare.errors.MalformedPayload` with a reason; it never crashes on garbage.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar

from qflare.crypto.contexts import SigningContext
from qflare.crypto.signing import SIGNATURE_SIZE, SigningKey, VerifyKey
from qflare.errors import InvalidSignature, LedgerIntegrityError, MalformedPayload

__all__ = [
    "ENTRY_PREFIX",
    "AggregatePublished",
    "DeviceEnrolled",
    "DeviceQuarantined",
    "DeviceRestored",
    "DeviceRevoked",
    "EnclaveQuotePublished",
    "KeySourceRefused",
    "SIGNED_EVENTS",
    "LedgerEvent",
    "QkdLinkAborted",
    "RoundClosed",
    "RoundFailed",
    "RoundOpened",
    "UpdateAccepted",
    "UpdateRefused",
    "decode_event",
    "encode_event",
    "event_fields",
    "sign_entry",
    "signed_message",
    "verify_entry",
]

ENTRY_PREFIX: Final = b"qflare-ledger-entry/v1\n"
_MAX_INT: Final = 2**63 - 1
_MAX_STR: Final = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")


def _bad(message: str, reason: str = "malformed_entry") -> MalformedPayload:
    return MalformedPayload(message, reason=reason)


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """Base of all ledger events. ``time_ms`` is UNIX time in milliseconds (integer), set by the caller."""

    EVENT: ClassVar[str] = ""
    SPEC: ClassVar[Mapping[str, str]] = {}


# Field kinds: str, int, sha256 (64 lowercase hex), hex, real (float), opt_str, opt_int, opt_real,
# params (str -> str | int), weights (tuple of (device id, real)).


@dataclass(frozen=True, slots=True)
class DeviceEnrolled(LedgerEvent):
    """A device's public key was enrolled."""

    device_id: str
    public_key_sha256: str
    time_ms: int
    EVENT: ClassVar[str] = "device_enrolled"
    SPEC: ClassVar[Mapping[str, str]] = {"device_id": "str", "public_key_sha256": "sha256", "time_ms": "int"}


@dataclass(frozen=True, slots=True)
class DeviceRevoked(LedgerEvent):
    """A device was revoked (immediate, permanent)."""

    device_id: str
    reason: str
    time_ms: int
    EVENT: ClassVar[str] = "device_revoked"
    SPEC: ClassVar[Mapping[str, str]] = {"device_id": "str", "reason": "str", "time_ms": "int"}


@dataclass(frozen=True, slots=True)
class DeviceQuarantined(LedgerEvent):
    """A device was quarantined (its updates are refused until restored)."""

    device_id: str
    reason: str
    time_ms: int
    EVENT: ClassVar[str] = "device_quarantined"
    SPEC: ClassVar[Mapping[str, str]] = {"device_id": "str", "reason": "str", "time_ms": "int"}


@dataclass(frozen=True, slots=True)
class DeviceRestored(LedgerEvent):
    """A quarantined device was restored."""

    device_id: str
    time_ms: int
    EVENT: ClassVar[str] = "device_restored"
    SPEC: ClassVar[Mapping[str, str]] = {"device_id": "str", "time_ms": "int"}


@dataclass(frozen=True, slots=True)
class EnclaveQuotePublished(LedgerEvent):
    """The enclave published an attestation quote binding its public keys to its measurement."""

    measurement: str
    quote_sha256: str
    public_keys_sha256: str
    time_ms: int
    EVENT: ClassVar[str] = "enclave_quote_published"
    SPEC: ClassVar[Mapping[str, str]] = {
        "measurement": "hex",
        "quote_sha256": "sha256",
        "public_keys_sha256": "sha256",
        "time_ms": "int",
    }


@dataclass(frozen=True, slots=True)
class RoundOpened(LedgerEvent):
    """A round was opened with a global model, an aggregation rule and a deadline."""

    round_id: int
    global_model_sha256: str
    rule: str
    deadline_ms: int
    time_ms: int
    EVENT: ClassVar[str] = "round_opened"
    SPEC: ClassVar[Mapping[str, str]] = {
        "round_id": "int",
        "global_model_sha256": "sha256",
        "rule": "str",
        "deadline_ms": "int",
        "time_ms": "int",
    }


@dataclass(frozen=True, slots=True)
class RoundClosed(LedgerEvent):
    """A round closed with ``accepted`` updates."""

    round_id: int
    accepted: int
    time_ms: int
    EVENT: ClassVar[str] = "round_closed"
    SPEC: ClassVar[Mapping[str, str]] = {"round_id": "int", "accepted": "int", "time_ms": "int"}


@dataclass(frozen=True, slots=True)
class RoundFailed(LedgerEvent):
    """A round failed (no quorum, aggregation error, ...)."""

    round_id: int
    reason: str
    time_ms: int
    EVENT: ClassVar[str] = "round_failed"
    SPEC: ClassVar[Mapping[str, str]] = {"round_id": "int", "reason": "str", "time_ms": "int"}


@dataclass(frozen=True, slots=True)
class UpdateAccepted(LedgerEvent):
    """An update was accepted into a round."""

    device_id: str
    round_id: int
    envelope_sha256: str
    sample_count: int
    update_norm: float
    verdict: str
    time_ms: int
    producer_signature: str | None = None
    EVENT: ClassVar[str] = "update_accepted"
    SPEC: ClassVar[Mapping[str, str]] = {
        "device_id": "str",
        "round_id": "int",
        "envelope_sha256": "sha256",
        "sample_count": "int",
        "update_norm": "real",
        "verdict": "str",
        "time_ms": "int",
        "producer_signature": "opt_signature",
    }


@dataclass(frozen=True, slots=True)
class UpdateRefused(LedgerEvent):
    """An update was refused; ``device_id`` only if the sender was authenticated."""

    reason: str
    device_id: str | None
    round_id: int | None
    time_ms: int
    EVENT: ClassVar[str] = "update_refused"
    SPEC: ClassVar[Mapping[str, str]] = {
        "reason": "str",
        "device_id": "opt_str",
        "round_id": "opt_int",
        "time_ms": "int",
    }


@dataclass(frozen=True, slots=True)
class AggregatePublished(LedgerEvent):
    """A new global model was published: its hash, the rule and its parameters, and each participant's weight."""

    round_id: int
    model_sha256: str
    rule: str
    parameters: Mapping[str, str | int]
    participants: tuple[tuple[str, float], ...]
    time_ms: int
    producer_signature: str | None = None
    EVENT: ClassVar[str] = "aggregate_published"
    SPEC: ClassVar[Mapping[str, str]] = {
        "round_id": "int",
        "model_sha256": "sha256",
        "rule": "str",
        "parameters": "params",
        "participants": "weights",
        "time_ms": "int",
        "producer_signature": "opt_signature",
    }


@dataclass(frozen=True, slots=True)
class QkdLinkAborted(LedgerEvent):
    """A QKD link aborted key distillation (QBER too high, authentication failure, ...)."""

    link_id: str
    reason: str
    qber: float | None
    time_ms: int
    EVENT: ClassVar[str] = "qkd_link_aborted"
    SPEC: ClassVar[Mapping[str, str]] = {"link_id": "str", "reason": "str", "qber": "opt_real", "time_ms": "int"}


@dataclass(frozen=True, slots=True)
class KeySourceRefused(LedgerEvent):
    """A request's key source (e.g. QKD key IDs) was refused."""

    key_source: str
    reason: str
    device_id: str | None
    time_ms: int
    EVENT: ClassVar[str] = "key_source_refused"
    SPEC: ClassVar[Mapping[str, str]] = {
        "key_source": "str",
        "reason": "str",
        "device_id": "opt_str",
        "time_ms": "int",
    }


_EVENTS: Final[dict[str, type[LedgerEvent]]] = {
    cls.EVENT: cls
    for cls in (
        DeviceEnrolled,
        DeviceRevoked,
        DeviceQuarantined,
        DeviceRestored,
        EnclaveQuotePublished,
        RoundOpened,
        RoundClosed,
        RoundFailed,
        UpdateAccepted,
        UpdateRefused,
        AggregatePublished,
        QkdLinkAborted,
        KeySourceRefused,
    )
}


def _real_to_json(value: object, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{name} must be a number", "bad_entry_field")
    f = float(value)
    if not math.isfinite(f):
        raise _bad(f"{name} must be finite", "non_finite")
    return repr(f)


def _real_from_json(value: object, name: str) -> float:
    if not isinstance(value, str):
        raise _bad(f"{name} must be a decimal string", "bad_entry_field")
    try:
        f = float(value)
    except ValueError:
        raise _bad(f"{name} is not a decimal", "bad_entry_field") from None
    if not math.isfinite(f):
        raise _bad(f"{name} must be finite", "non_finite")
    if repr(f) != value:
        raise _bad(f"{name} is not in canonical form", "non_canonical_entry")
    return f


def _check_str(value: object, name: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_STR:
        raise _bad(f"{name} must be a string of at most {_MAX_STR} characters", "bad_entry_field")
    return value


def _check_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
        raise _bad(f"{name} must be an integer in [0, 2**63)", "bad_entry_field")
    return value


def _to_json(kind: str, value: object, name: str) -> object:
    if kind.startswith("opt_"):
        return None if value is None else _to_json(kind[4:], value, name)
    if kind == "str":
        return _check_str(value, name)
    if kind == "int":
        return _check_int(value, name)
    if kind == "signature":
        if not isinstance(value, str) or len(value) != 2 * SIGNATURE_SIZE or not _HEX.fullmatch(value):
            raise _bad(f"{name} must be {2 * SIGNATURE_SIZE} lowercase hex digits (a composite signature)",
                       "bad_entry_field")
        return value
    if kind in ("sha256", "hex"):
        s = _check_str(value, name)
        if not (_HEX64 if kind == "sha256" else _HEX).fullmatch(s):
            raise _bad(f"{name} must be lowercase hex", "bad_entry_field")
        return s
    if kind == "real":
        return _real_to_json(value, name)
    if kind == "params":
        if not isinstance(value, Mapping):
            raise _bad(f"{name} must be a mapping", "bad_entry_field")
        out: dict[str, object] = {}
        for k, v in value.items():
            _check_str(k, f"{name} key")
            out[k] = _check_int(v, f"{name}.{k}") if isinstance(v, int) else _check_str(v, f"{name}.{k}")
        return out
    if kind == "weights":
        if not isinstance(value, tuple | list):
            raise _bad(f"{name} must be a sequence of (device id, weight)", "bad_entry_field")
        pairs = []
        for item in value:
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise _bad(f"{name} must hold (device id, weight) pairs", "bad_entry_field")
            pairs.append([_check_str(item[0], f"{name} device"), _real_to_json(item[1], f"{name} weight")])
        if len({p[0] for p in pairs}) != len(pairs):
            raise _bad(f"{name} lists a device twice", "bad_entry_field")
        return pairs
    raise AssertionError(kind)  # pragma: no cover - the SPEC tables are fixed


def _from_json(kind: str, value: object, name: str) -> object:
    if kind.startswith("opt_"):
        return None if value is None else _from_json(kind[4:], value, name)
    if kind == "real":
        return _real_from_json(value, name)
    if kind == "params":
        if not isinstance(value, dict):
            raise _bad(f"{name} must be an object", "bad_entry_field")
        return dict(_to_json("params", value, name))  # type: ignore[call-overload]
    if kind == "weights":
        if not isinstance(value, list):
            raise _bad(f"{name} must be a list", "bad_entry_field")
        out = []
        for item in value:
            if not isinstance(item, list) or len(item) != 2:
                raise _bad(f"{name} must hold [device id, weight] pairs", "bad_entry_field")
            out.append((_check_str(item[0], f"{name} device"), _real_from_json(item[1], f"{name} weight")))
        return tuple(out)
    return _to_json(kind, value, name)


def encode_event(event: LedgerEvent) -> bytes:
    """The canonical leaf bytes of ``event``.

    Raises
    ------
    MalformedPayload
        ``bad_entry_field`` / ``non_finite`` if a field has the wrong type or value.
    """
    cls = type(event)
    if _EVENTS.get(cls.EVENT) is not cls:
        raise _bad(f"{cls.__name__} is not a ledger event", "unknown_event")
    obj: dict[str, object] = {"event": cls.EVENT}
    for name, kind in cls.SPEC.items():
        obj[name] = _to_json(kind, getattr(event, name), name)
    return ENTRY_PREFIX + json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _no_float(text: str) -> Any:
    raise ValueError("JSON reals are not allowed")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate member")
    return out


def decode_event(data: bytes) -> LedgerEvent:
    """Strictly decode canonical leaf bytes back into an event.

    Raises
    ------
    MalformedPayload
        ``unknown_entry_version``, ``malformed_entry``, ``unknown_event``, ``bad_entry_fields``,
        ``bad_entry_field``, ``non_finite`` or ``non_canonical_entry``.
    """
    data = bytes(data)
    if not data.startswith(ENTRY_PREFIX):
        raise _bad("not a qflare-ledger-entry/v1 entry", "unknown_entry_version")
    try:
        obj = json.loads(
            data[len(ENTRY_PREFIX) :].decode("ascii"),
            parse_float=_no_float,
            parse_constant=_no_float,
            object_pairs_hook=_unique_object,
        )
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise _bad("entry is not canonical ASCII JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        raise _bad("entry must be a JSON object with an event name")
    cls = _EVENTS.get(obj["event"])
    if cls is None:
        raise _bad(f"unknown event {obj['event']!r}", "unknown_event")
    if set(obj) != {"event", *cls.SPEC}:
        raise _bad(f"{cls.EVENT} entry has the wrong members", "bad_entry_fields")
    values = {name: _from_json(kind, obj[name], name) for name, kind in cls.SPEC.items()}
    event = cls(**values)
    if encode_event(event) != data:
        raise _bad("entry is not in canonical form", "non_canonical_entry")
    return event


def event_fields(event: LedgerEvent) -> dict[str, object]:
    """The event's fields as a dict (for display)."""
    return {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}


# -------------------------------------------------------------------------------- signed entries

SIGNED_EVENTS: Final[tuple[type[LedgerEvent], ...]] = (UpdateAccepted, AggregatePublished)
"""Events whose entry must carry ``producer_signature``: the log key's composite signature, made where
the fact is known (inside the enclave when one runs), so a host cannot log an update or an aggregate
the enclave did not produce (``docs/ledger.md``, "Signed entries")."""


S = TypeVar("S", UpdateAccepted, AggregatePublished)


def signed_message(event: UpdateAccepted | AggregatePublished) -> bytes:
    """What ``producer_signature`` signs: the entry's canonical bytes with ``producer_signature`` null."""
    return encode_event(dataclasses.replace(event, producer_signature=None))


def sign_entry(event: S, key: SigningKey) -> S:
    """``event`` with its ``producer_signature`` (composite ML-DSA-65 + Ed25519, context
    ``qflare/v1/ledger-entry``) over :func:`signed_message`."""
    sig = key.sign(signed_message(event), SigningContext.LEDGER_ENTRY)
    return dataclasses.replace(event, producer_signature=sig.hex())


def verify_entry(event: LedgerEvent, key: VerifyKey) -> None:
    """Check a :data:`SIGNED_EVENTS` entry's ``producer_signature`` under ``key``; other events pass.

    Raises
    ------
    LedgerIntegrityError
        ``unsigned_entry`` (no signature) or ``invalid_entry_signature``.
    """
    if not isinstance(event, UpdateAccepted | AggregatePublished):
        return
    if event.producer_signature is None:
        raise LedgerIntegrityError(f"{event.EVENT} entry carries no producer signature", reason="unsigned_entry")
    try:
        key.verify(bytes.fromhex(event.producer_signature), signed_message(event), SigningContext.LEDGER_ENTRY)
    except InvalidSignature:
        raise LedgerIntegrityError(f"{event.EVENT} entry's producer signature does not verify under the log key",
                                   reason="invalid_entry_signature") from None
