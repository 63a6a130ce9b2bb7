"""One exception hierarchy for all of QFLARE.

Every error carries a stable, machine-readable ``reason`` code (snake_case) and a human message.
Domain packages raise these; only ``qflare.server.errors`` maps them to HTTP status codes, and only
``qflare.cli`` maps them to exit codes::

    QFlareError
    ├── ConfigError                 bad configuration file or value
    ├── InvalidInput                a request or payload that cannot be accepted as sent
    │   ├── MalformedPayload        bytes that do not parse (JSON, safetensors, envelope)
    │   ├── ModelSpecMismatch       a tensor missing, extra, of the wrong shape or dtype
    │   ├── NonFiniteValues         NaN or Inf in a tensor
    │   └── UpdateRejected          a well-formed update that fails a policy check (norm, ...)
    ├── PayloadTooLarge             over a configured size limit
    ├── RateLimited                 too many requests from one source or device (retry after)
    ├── AuthenticationError         the sender could not be authenticated
    │   ├── Unauthenticated         one answer for unknown device / bad signature (cause kept server-side)
    │   ├── UnknownDevice
    │   ├── InvalidSignature
    │   ├── DecryptionFailed
    │   └── StaleRequest            timestamp outside the accepted window
    ├── PermissionDenied            authenticated, but not allowed (revoked device, not selected)
    ├── NotFound                    unknown round, model version, device
    ├── Conflict                    the request clashes with state already recorded
    │   ├── ReplayDetected          a nonce seen before
    │   ├── RoundClosed             a late update, or a round that is not open
    │   └── DuplicateUpdate         a second update from one device in one round
    ├── CryptoError                 a cryptographic operation failed (never exposes unauthenticated data)
    ├── EnclaveError                the enclave refused or is unavailable
    ├── AttestationError            a quote that does not verify
    ├── QKDError                    QKD link or key-delivery failure
    ├── LedgerIntegrityError        a log, proof or tree head that does not verify
    └── AggregationError            aggregation could not be performed
"""

from __future__ import annotations

__all__ = [
    "AggregationError",
    "AttestationError",
    "AuthenticationError",
    "ConfigError",
    "Conflict",
    "CryptoError",
    "DecryptionFailed",
    "DuplicateUpdate",
    "EnclaveError",
    "InvalidInput",
    "InvalidSignature",
    "LedgerIntegrityError",
    "MalformedPayload",
    "ModelSpecMismatch",
    "NonFiniteValues",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "PermissionDenied",
    "QFlareError",
    "QKDError",
    "ReplayDetected",
    "RoundClosed",
    "StaleRequest",
    "Unauthenticated",
    "UnknownDevice",
    "UpdateRejected",
]


class QFlareError(Exception):
    """Base of every QFLARE error.

    Parameters
    ----------
    message:
        What went wrong, for a human. Never contains key material.
    reason:
        A stable snake_case code for machines; defaults to the class's ``default_reason``.
    """

    default_reason = "error"
    # Set by a device client: whether the server's refusal came sealed under the request's response key
    # (so an on-path attacker could not have forged it). Unsealed refusals are hints only.
    authenticated: bool = False

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        self.reason = reason or self.default_reason
        self.message = message or self.reason.replace("_", " ")
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, message={self.message!r})"


class ConfigError(QFlareError):
    default_reason = "invalid_config"


class InvalidInput(QFlareError):
    default_reason = "invalid_input"


class MalformedPayload(InvalidInput):
    default_reason = "malformed_payload"


class ModelSpecMismatch(InvalidInput):
    default_reason = "spec_mismatch"


class NonFiniteValues(InvalidInput):
    default_reason = "non_finite"


class UpdateRejected(InvalidInput):
    default_reason = "update_rejected"


class PayloadTooLarge(QFlareError):
    default_reason = "payload_too_large"


class RateLimited(QFlareError):
    """Refused for rate; ``retry_after`` is when one more request would be allowed, in seconds."""

    default_reason = "rate_limited"

    def __init__(self, message: str = "", *, reason: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


class AuthenticationError(QFlareError):
    default_reason = "unauthenticated"


class Unauthenticated(AuthenticationError):
    """The one answer to a request that could not be authenticated, whatever the cause.

    ``cause`` (``unknown_device``, ``bad_signature``, ...) is for the server's own record only: an
    unauthenticated caller must not learn which devices are enrolled.
    """

    default_reason = "unauthenticated"

    def __init__(self, message: str = "", *, cause: str = "unauthenticated") -> None:
        super().__init__(message or "the request could not be authenticated", reason="unauthenticated")
        self.cause = cause


class UnknownDevice(AuthenticationError):
    default_reason = "unknown_device"


class InvalidSignature(AuthenticationError):
    default_reason = "bad_signature"


class DecryptionFailed(AuthenticationError):
    default_reason = "decryption_failed"


class StaleRequest(AuthenticationError):
    default_reason = "stale_timestamp"


class PermissionDenied(QFlareError):
    default_reason = "forbidden"


class NotFound(QFlareError):
    default_reason = "not_found"


class Conflict(QFlareError):
    default_reason = "conflict"


class ReplayDetected(Conflict):
    default_reason = "replay"


class RoundClosed(Conflict):
    default_reason = "round_closed"


class DuplicateUpdate(Conflict):
    default_reason = "duplicate_update"


class CryptoError(QFlareError):
    default_reason = "crypto_error"


class EnclaveError(QFlareError):
    default_reason = "enclave_unavailable"


class AttestationError(QFlareError):
    default_reason = "attestation_failed"


class QKDError(QFlareError):
    default_reason = "qkd_error"


class LedgerIntegrityError(QFlareError):
    default_reason = "ledger_integrity"


class AggregationError(QFlareError):
    default_reason = "aggregation_failed"
