"""The enclave-held device registry: enrolments and revocations signed by the operator key the enclave pins.

A registration is a canonical JSON statement, signed with the operator's composite key (ML-DSA-65 +
Ed25519) in context ``ENROLLMENT`` (``status: "active"``) or ``REVOCATION`` (``status: "revoked"``)::

    {"type": "qflare.device-registration/1", "device_id": str, "public_key": hex, "key_source": str,
     "status": "active" | "revoked", "sequence": int[, "max_examples": int]}

``max_examples`` (present only when the operator set one) is the most training examples one update of
the device may claim: the enclave refuses a larger claim (``num_examples_above_cap``).

The operator's public key is part of the measured :class:`~qflare.enclave.config.EnclaveConfig`
(``operator_key``), so devices that pin the measurement pin who may enrol devices. The enclave keeps
the newest statement per device (highest ``sequence``; an older one is refused, an identical one is
accepted again so the host can re-send everything after a restart) and checks every update envelope's
device signature against it. Runs inside the enclave: no host-only imports here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from qflare.crypto.signing import SigningContext, SigningKey, VerifyKey
from qflare.errors import InvalidInput, InvalidSignature, QFlareError

__all__ = [
    "REGISTRATION_TYPE",
    "DeviceRegistration",
    "DeviceRegistry",
    "sign_registration",
    "verify_registration",
]

REGISTRATION_TYPE: Final = "qflare.device-registration/1"
_STATUSES: Final = ("active", "revoked")
_KEY_SOURCES: Final = ("hybrid", "mlkem", "qkd")
_DEVICE_ID: Final = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_MAX_STATEMENT: Final = 16 * 1024
_KEYS: Final = {"type", "device_id", "public_key", "key_source", "status", "sequence"}
_OPTIONAL: Final = {"max_examples"}


def _context(status: str) -> SigningContext:
    return SigningContext.ENROLLMENT if status == "active" else SigningContext.REVOCATION


@dataclass(frozen=True)
class DeviceRegistration:
    """One device's enrolment or revocation, as the operator signs it.

    Parameters
    ----------
    device_id:
        The id the device puts in its envelopes.
    public_key:
        Its composite ML-DSA-65 + Ed25519 public key (raw bytes).
    key_source:
        The one envelope key source the device uses (``mlkem``, ``hybrid``, ``qkd``).
    status:
        ``"active"`` or ``"revoked"``.
    sequence:
        Orders statements about one device: the enclave keeps the highest.
    max_examples:
        The most training examples one update may claim (``None``: no cap).
    """

    device_id: str
    public_key: bytes
    key_source: str
    status: str
    sequence: int
    max_examples: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, str) or not _DEVICE_ID.fullmatch(self.device_id):
            raise InvalidInput("registration device_id is not a valid device id", reason="bad_registration")
        if self.status not in _STATUSES:
            raise InvalidInput("registration status must be active or revoked", reason="bad_registration")
        if self.key_source not in _KEY_SOURCES:
            raise InvalidInput("registration key_source is unknown", reason="bad_registration")
        seq = self.sequence
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63:
            raise InvalidInput("registration sequence must be a non-negative integer", reason="bad_registration")
        cap = self.max_examples
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap < 2**31):
            raise InvalidInput("registration max_examples must be a positive integer", reason="bad_registration")
        try:
            VerifyKey.from_bytes(bytes(self.public_key))
        except (QFlareError, ValueError):
            raise InvalidInput("registration public_key is not a composite key", reason="bad_registration") from None

    @property
    def revoked(self) -> bool:
        """Whether this statement revokes the device."""
        return self.status == "revoked"

    def verify_key(self) -> VerifyKey:
        """The device's public key."""
        return VerifyKey.from_bytes(self.public_key)

    def to_bytes(self) -> bytes:
        """The canonical statement that gets signed."""
        doc = {
            "type": REGISTRATION_TYPE,
            "device_id": self.device_id,
            "public_key": self.public_key.hex(),
            "key_source": self.key_source,
            "status": self.status,
            "sequence": self.sequence,
        }
        if self.max_examples is not None:
            doc["max_examples"] = self.max_examples
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceRegistration:
        """Parse a canonical statement; anything else raises ``InvalidInput`` (``bad_registration``)."""
        bad = InvalidInput("not a device registration statement", reason="bad_registration")
        if len(data) > _MAX_STATEMENT:
            raise bad
        try:
            doc: Any = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise bad from None
        if not isinstance(doc, dict) or not _KEYS <= set(doc) <= _KEYS | _OPTIONAL or doc["type"] != REGISTRATION_TYPE:
            raise bad
        if not isinstance(doc["public_key"], str):
            raise bad
        try:
            key = bytes.fromhex(doc["public_key"])
        except ValueError:
            raise bad from None
        reg = cls(device_id=doc["device_id"], public_key=key, key_source=doc["key_source"], status=doc["status"],
                  sequence=doc["sequence"], max_examples=doc.get("max_examples"))
        if reg.to_bytes() != bytes(data):  # one encoding per statement
            raise bad
        return reg


def sign_registration(registration: DeviceRegistration, operator_key: SigningKey) -> bytes:
    """The operator's signature over a registration (host side, or offline)."""
    return operator_key.sign(registration.to_bytes(), _context(registration.status))


def verify_registration(statement: bytes, signature: bytes, *, operator_key: VerifyKey) -> DeviceRegistration:
    """Parse ``statement`` and check the operator signed it.

    Raises
    ------
    InvalidInput
        ``bad_registration``: not a canonical statement.
    InvalidSignature
        ``bad_registration_signature``: not signed by the pinned operator key (or in the wrong context).
    """
    registration = DeviceRegistration.from_bytes(statement)
    try:
        operator_key.verify(signature, bytes(statement), _context(registration.status))
    except InvalidSignature:
        raise InvalidSignature(
            "device registration is not signed by the pinned operator key", reason="bad_registration_signature"
        ) from None
    return registration


class DeviceRegistry:
    """The newest operator-signed statement per device (inside the enclave)."""

    def __init__(self) -> None:
        self._devices: dict[str, DeviceRegistration] = {}

    def __len__(self) -> int:
        return len(self._devices)

    def get(self, device_id: str) -> DeviceRegistration | None:
        """The device's current statement, or ``None`` for a device the operator never enrolled."""
        return self._devices.get(device_id)

    def apply(self, registration: DeviceRegistration) -> bool:
        """Record a verified statement; ``True`` when it changed the registry.

        Raises
        ------
        InvalidInput
            ``stale_registration``: an older statement, or another with the same sequence.
        """
        current = self._devices.get(registration.device_id)
        if current == registration:
            return False
        if current is not None and registration.sequence <= current.sequence:
            raise InvalidInput(
                f"registration {registration.sequence} for {registration.device_id!r} is not newer than "
                f"{current.sequence}",
                reason="stale_registration",
            )
        self._devices[registration.device_id] = registration
        return True

    def statements(self) -> list[str]:
        """Every current statement, in device order (what the enclave seals)."""
        return [r.to_bytes().decode("ascii") for _, r in sorted(self._devices.items())]

    @classmethod
    def from_statements(cls, items: object) -> DeviceRegistry:
        """Load :meth:`statements` output (from sealed state, so trusted)."""
        if not isinstance(items, list):
            raise InvalidInput("sealed registry is malformed", reason="bad_registration")
        registry = cls()
        for item in items:
            if not isinstance(item, str):
                raise InvalidInput("sealed registry is malformed", reason="bad_registration")
            registry.apply(DeviceRegistration.from_bytes(item.encode("ascii")))
        return registry
