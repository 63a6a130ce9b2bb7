"""The enclave's call table (like an SGX EDL file): a fixed set of named calls with typed fields.

Each call is a frozen dataclass naming its result type. On the wire a call is one JSON object
``{"call": name, "args": {...}}`` and a result ``{"ok": {...}}`` or ``{"error": {"type", "reason",
"message"}}``. Decoding is strict: an unknown call name, a missing or extra field, or a value of the
wrong type is refused (``EnclaveError`` reason ``ecall_refused``) before any enclave code runs. Field
types are limited to ``int``, ``float``, ``bool``, ``str``, ``bytes`` (base64, at most 64 KiB),
:class:`Region` (a slice of the shared memory region), ``tuple[str, ...]`` and ``X | None``. Bulk data
(updates, models, envelopes) never goes through JSON: it travels as a :class:`Region`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final, TypeVar

from qflare import errors
from qflare.errors import EnclaveError, QFlareError

__all__ = [
    "CALLS",
    "MAX_INLINE_BYTES",
    "Accumulate",
    "AccumulatedResult",
    "AbortRound",
    "BeginRound",
    "DigestResult",
    "Ecall",
    "Empty",
    "Finalize",
    "FinalizedResult",
    "GetIdentity",
    "GetQuote",
    "IdentityResult",
    "OpenRequest",
    "OpenedRequestResult",
    "QuoteResult",
    "Region",
    "Replay",
    "RegisterDevice",
    "RegistrationResult",
    "RestoreRound",
    "RoundStatusResult",
    "SealResponse",
    "SealedResponseResult",
    "LedgerHead",
    "LedgerHeadResult",
    "NoteSignaturesResult",
    "Shutdown",
    "SignInitialModel",
    "SignNote",
    "SignTask",
    "SignatureResult",
    "UnsafeDebugKeyDigest",
    "UpdateReceiptResult",
    "ValidateUpdate",
    "decode_call",
    "decode_result",
    "encode_call",
    "encode_error",
    "encode_result",
]

MAX_INLINE_BYTES: Final = 64 * 1024
_MAX_STR: Final = 1024 * 1024
_MAX_ITEMS: Final = 1_000_000


@dataclass(frozen=True)
class Region:
    """A slice ``[offset, offset + length)`` of the shared memory region."""

    offset: int
    length: int


class Ecall:
    """Base of every call; subclasses are frozen dataclasses."""

    name: ClassVar[str]
    result: ClassVar[type[Any]]


# -------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Empty:
    """No result."""


@dataclass(frozen=True)
class IdentityResult:
    """Who the enclave is and its public keys (``kem_public_key``, ``signing_public_key``)."""

    measurement: bytes
    signer: bytes
    isv_prod_id: int
    isv_svn: int
    debug: bool
    simulated: bool
    platform: str
    kem_public_key: bytes
    signing_public_key: bytes
    dumpable: bool
    modules: tuple[str, ...]


@dataclass(frozen=True)
class QuoteResult:
    """An attestation quote."""

    quote: bytes


@dataclass(frozen=True)
class OpenedRequestResult:
    """A decrypted small request; ``payload`` is in the output half of the region."""

    request_hash: bytes
    device_id: str
    method: str
    path: str
    round_id: str | None
    payload: Region


@dataclass(frozen=True)
class SealedResponseResult:
    """A sealed response in the output half of the region."""

    response: Region


@dataclass(frozen=True)
class RoundStatusResult:
    """A round's state inside the enclave; ``included`` lists the update ids already counted."""

    round_id: int
    count: int
    total_examples: int
    included: tuple[str, ...]
    restored: bool


@dataclass(frozen=True)
class UpdateReceiptResult:
    """A validated update: its id (the handle), metadata, and what the host must store.

    ``stored_form`` ``"sealed"``: ``sealed`` is the whole stored update. ``"envelope"``: ``sealed`` is
    the sealed key blob, and the host stores it wrapped with the envelope it sent
    (:func:`qflare.enclave.stored.stored_envelope`), so the envelope does not cross back.

    ``norm``: the L2 norm of the update's step from the round's base model. ``ledger_entry``: the
    canonical ``update_accepted`` ledger entry, signed with the enclave's key (envelope updates only;
    ``docs/ledger.md``, "Signed entries"). ``dp_epsilon``: the local-DP epsilon the update's metadata
    reports (``None``: none).
    """

    stored_form: str
    update_id: str
    request_hash: bytes | None
    num_examples: int
    train_loss: float | None
    sha256: str
    size_bytes: int
    sealed: Region
    norm: float | None
    ledger_entry: bytes | None
    dp_epsilon: float | None


@dataclass(frozen=True)
class AccumulatedResult:
    """The round after an update was counted (``skipped``: it already was).

    ``covered``: update ids a sealed checkpoint now holds (finished since the previous answer); the
    host no longer needs their stored copies to restore the round after an enclave restart.
    """

    count: int
    total_examples: int
    skipped: bool
    covered: tuple[str, ...]


@dataclass(frozen=True)
class FinalizedResult:
    """The new global model (in the region), the enclave's signature over it, the round's signed
    ``aggregate_published`` ledger entry (``None`` when a counted update came without a device id), and the
    devices whose updates the rule flagged (its verdicts, for the host's reputation and quarantine)."""

    model: Region
    signature: bytes
    count: int
    total_examples: int
    ledger_entry: bytes | None
    flagged: tuple[str, ...]


@dataclass(frozen=True)
class SignatureResult:
    """A composite signature."""

    signature: bytes


@dataclass(frozen=True)
class LedgerHeadResult:
    """The last checkpoint the enclave signed: its size and root (size 0, empty root: none yet)."""

    size: int
    root: bytes


@dataclass(frozen=True)
class NoteSignaturesResult:
    """Signed-note signature lines (``— <name> base64(key ID || signature)\\n`` each), in note order."""

    lines: bytes


@dataclass(frozen=True)
class RegistrationResult:
    """The enclave's registry after a statement: the device's status and sequence, and the registry size."""

    device_id: str
    status: str
    sequence: int
    changed: bool
    devices: int


@dataclass(frozen=True)
class DigestResult:
    """A hex SHA-256."""

    sha256: str


# -------------------------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class GetIdentity(Ecall):
    """Measurement, signer, SVN, public keys."""

    name: ClassVar[str] = "get_identity"
    result: ClassVar[type[Any]] = IdentityResult


@dataclass(frozen=True)
class GetQuote(Ecall):
    """A quote whose report data binds the public keys to ``nonce``."""

    name: ClassVar[str] = "get_quote"
    result: ClassVar[type[Any]] = QuoteResult
    nonce: bytes


@dataclass(frozen=True)
class OpenRequest(Ecall):
    """Decapsulate and decrypt a small (non-update) request envelope the host pre-checked."""

    name: ClassVar[str] = "open_request"
    result: ClassVar[type[Any]] = OpenedRequestResult
    envelope: Region
    allowed_key_sources: tuple[str, ...]
    extra_secret: bytes | None


@dataclass(frozen=True)
class SealResponse(Ecall):
    """Seal the one response to an opened request (identified by its transcript hash)."""

    name: ClassVar[str] = "seal_response"
    result: ClassVar[type[Any]] = SealedResponseResult
    request_hash: bytes
    payload: Region


@dataclass(frozen=True)
class BeginRound(Ecall):
    """Start aggregating a round on top of a base model (forgets any earlier state of that round)."""

    name: ClassVar[str] = "begin_round"
    result: ClassVar[type[Any]] = RoundStatusResult
    round_id: int
    base_model: Region
    spec_json: str


@dataclass(frozen=True)
class RestoreRound(Ecall):
    """Start a round from its sealed checkpoint, if one matches (after an enclave restart)."""

    name: ClassVar[str] = "restore_round"
    result: ClassVar[type[Any]] = RoundStatusResult
    round_id: int
    base_model: Region
    spec_json: str


@dataclass(frozen=True)
class ValidateUpdate(Ecall):
    """Decrypt (``kind="envelope"``) or take (``"plaintext"``) an update, validate it, seal it."""

    name: ClassVar[str] = "validate_update"
    result: ClassVar[type[Any]] = UpdateReceiptResult
    round_id: int
    data: Region
    kind: str
    allowed_key_sources: tuple[str, ...]
    extra_secret: bytes | None
    time_ms: int


@dataclass(frozen=True)
class Accumulate(Ecall):
    """Count a validated update (by its id) in the round's running aggregate."""

    name: ClassVar[str] = "accumulate"
    result: ClassVar[type[Any]] = AccumulatedResult
    round_id: int
    update_id: str


@dataclass(frozen=True)
class Replay(Ecall):
    """Unseal, re-validate and count a sealed update (skipped when already counted)."""

    name: ClassVar[str] = "replay"
    result: ClassVar[type[Any]] = AccumulatedResult
    round_id: int
    sealed: Region


@dataclass(frozen=True)
class Finalize(Ecall):
    """Aggregate, sign and forget the round."""

    name: ClassVar[str] = "finalize"
    result: ClassVar[type[Any]] = FinalizedResult
    round_id: int
    time_ms: int


@dataclass(frozen=True)
class AbortRound(Ecall):
    """Forget the round and its checkpoint."""

    name: ClassVar[str] = "abort_round"
    result: ClassVar[type[Any]] = Empty
    round_id: int


@dataclass(frozen=True)
class SignTask(Ecall):
    """Sign a round task; only for a round being aggregated on a base model with that hash."""

    name: ClassVar[str] = "sign_task"
    result: ClassVar[type[Any]] = SignatureResult
    round_id: int
    model_sha256: str
    deadline_ms: int


@dataclass(frozen=True)
class RegisterDevice(Ecall):
    """Record an operator-signed device enrolment or revocation (:mod:`qflare.enclave.registry`)."""

    name: ClassVar[str] = "register_device"
    result: ClassVar[type[Any]] = RegistrationResult
    statement: bytes
    signature: bytes


@dataclass(frozen=True)
class SignInitialModel(Ecall):
    """Sign the version-0 model (round 0); only while the enclave has signed no model yet."""

    name: ClassVar[str] = "sign_initial_model"
    result: ClassVar[type[Any]] = SignatureResult
    model: Region


@dataclass(frozen=True)
class SignNote(Ecall):
    """Sign a transparency-log checkpoint body (``docs/ledger.md``) with the enclave's hybrid key.

    Only a canonical C2SP checkpoint body for the enclave's measured origin
    (``EnclaveConfig.ledger_origin``), without extension lines, that extends the last checkpoint the
    enclave signed (``proof``) is signed; anything else is refused.
    """

    name: ClassVar[str] = "sign_note"
    result: ClassVar[type[Any]] = NoteSignaturesResult
    text: bytes
    proof: tuple[bytes, ...] = ()
    """RFC 9162 consistency proof from the last checkpoint the enclave signed (:class:`LedgerHead`) to this one."""


@dataclass(frozen=True)
class LedgerHead(Ecall):
    """The size and root of the last checkpoint the enclave signed (what the next one must extend)."""

    name: ClassVar[str] = "ledger_head"
    result: ClassVar[type[Any]] = LedgerHeadResult


@dataclass(frozen=True)
class Shutdown(Ecall):
    """Exit cleanly."""

    name: ClassVar[str] = "shutdown"
    result: ClassVar[type[Any]] = Empty


@dataclass(frozen=True)
class UnsafeDebugKeyDigest(Ecall):
    """Debug enclaves only: SHA-256 over the private key seeds, so tests can recognise them."""

    name: ClassVar[str] = "unsafe_debug_key_digest"
    result: ClassVar[type[Any]] = DigestResult


CALLS: Final[dict[str, type[Ecall]]] = {
    cls.name: cls
    for cls in (
        GetIdentity,
        GetQuote,
        OpenRequest,
        SealResponse,
        BeginRound,
        RestoreRound,
        ValidateUpdate,
        Accumulate,
        Replay,
        Finalize,
        AbortRound,
        SignTask,
        RegisterDevice,
        SignInitialModel,
        SignNote,
        LedgerHead,
        Shutdown,
        UnsafeDebugKeyDigest,
    )
}
"""Every call the enclave answers; anything else is refused."""


# -------------------------------------------------------------------------------------------- codec

T = TypeVar("T")


def _refused(message: str) -> EnclaveError:
    return EnclaveError(message, reason="ecall_refused")


def _encode_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Region):
        return [value.offset, value.length]
    if isinstance(value, tuple):
        return [_encode_value(v) for v in value]
    return value


def _decode_value(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is types.UnionType or origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _decode_value(inner, value, where)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list) or len(value) > _MAX_ITEMS:
            raise _refused(f"{where}: expected a list")
        return tuple(_decode_value(item_tp, v, where) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise _refused(f"{where}: expected a boolean")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**64:
            raise _refused(f"{where}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _refused(f"{where}: expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or len(value) > _MAX_STR:
            raise _refused(f"{where}: expected a string")
        return value
    if tp is bytes:
        if not isinstance(value, str) or len(value) > (MAX_INLINE_BYTES * 4) // 3 + 4:
            raise _refused(f"{where}: expected base64 bytes (at most {MAX_INLINE_BYTES})")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _refused(f"{where}: invalid base64") from None
    if tp is Region:
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**48 for v in value)
        ):
            raise _refused(f"{where}: expected a region [offset, length]")
        return Region(offset=value[0], length=value[1])
    raise TypeError(f"unsupported ecall field type {tp!r}")  # pragma: no cover - a bug in this table


def _encode_fields(obj: Any) -> dict[str, Any]:
    return {f.name: _encode_value(getattr(obj, f.name)) for f in fields(obj)}


_SCHEMAS: dict[type[Any], tuple[tuple[str, ...], dict[str, Any]]] = {}


def _schema(cls: type[Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Field names and types of a call or result class (``get_type_hints`` is slow: cached)."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        names = tuple(f.name for f in fields(cls))
        schema = _SCHEMAS[cls] = (names, {n: hints[n] for n in names})
    return schema


def _decode_fields(cls: type[T], args: Any, where: str) -> T:
    if not isinstance(args, dict):
        raise _refused(f"{where}: arguments must be an object")
    names, hints = _schema(cls)
    if set(args) != set(names):
        raise _refused(f"{where}: expected fields {sorted(names)}, got {sorted(args)}")
    return cls(**{n: _decode_value(hints[n], args[n], f"{where}.{n}") for n in names})


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise _refused("frame is not valid JSON") from None


def encode_call(call: Ecall) -> bytes:
    """Serialise a call."""
    return _dumps({"call": call.name, "args": _encode_fields(call)})


def decode_call(data: bytes) -> Ecall:
    """Parse and type-check a call; anything not in :data:`CALLS` is refused."""
    doc = _loads(data)
    if not isinstance(doc, dict) or set(doc) != {"call", "args"} or not isinstance(doc["call"], str):
        raise _refused("a call is {call, args}")
    cls = CALLS.get(doc["call"])
    if cls is None:
        raise _refused(f"unknown call {doc['call'][:64]!r}")
    return _decode_fields(cls, doc["args"], cls.name)


def encode_result(result: Any) -> bytes:
    """Serialise a successful result."""
    return _dumps({"ok": _encode_fields(result)})


def encode_error(exc: QFlareError) -> bytes:
    """Serialise a refusal: class name, reason, message."""
    return _dumps({"error": {"type": type(exc).__name__, "reason": exc.reason, "message": exc.message[:500]}})


def decode_result(expected: type[T], data: bytes) -> T:
    """Parse a response to a call whose result type is ``expected``; re-raise a refusal as its error class.

    Raises
    ------
    QFlareError
        The enclave's refusal, as the same class from :mod:`qflare.errors` (unknown classes become
        ``EnclaveError`` ``enclave_internal_error``).
    """
    doc = _loads(data)
    if isinstance(doc, dict) and set(doc) == {"error"} and isinstance(doc["error"], dict):
        err = doc["error"]
        name, reason, message = err.get("type"), err.get("reason"), err.get("message")
        cls = getattr(errors, name, None) if isinstance(name, str) and name in errors.__all__ else None
        if not (isinstance(cls, type) and issubclass(cls, QFlareError)):
            cls = EnclaveError
            reason = "enclave_internal_error"
        raise cls(str(message)[:500], reason=str(reason)[:64] if reason else None)
    if not isinstance(doc, dict) or set(doc) != {"ok"}:
        raise EnclaveError("malformed enclave response", reason="enclave_protocol_error")
    return _decode_fields(expected, doc["ok"], expected.__name__)
