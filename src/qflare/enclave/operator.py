"""The operator's side of the enclave-held device registry (host code, never imported by the enclave).

The operator key signs every device enrolment and revocation the enclave accepts
(:mod:`qflare.enclave.registry`); its public half is pinned in the measured
:class:`~qflare.enclave.config.EnclaveConfig` (``operator_key``). :class:`OperatorKey` keeps it in a
key directory (``operator.key``, mode 0600, encrypted when ``QFLARE_SERVER_KEY_PASSPHRASE`` is set).
Whoever can read that file can enrol devices the enclave trusts: keep it off the server host (an
offline machine or an HSM) where the host itself is in the threat model.

:class:`DeviceRegistrar` derives each device's current statement from the server's device records and
signs it; the sequence number comes from the record's timestamps, so the same record always gives
the same statement (re-sent after restarts) and a revocation is always newer than the enrolment.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

from qflare.crypto.keyfile import read_private_key, write_private_key, write_public_key
from qflare.crypto.secret_access import TOKEN
from qflare.crypto.signing import SigningKey, VerifyKey
from qflare.enclave.registry import DeviceRegistration, sign_registration
from qflare.environment import environment
from qflare.errors import ConfigError

__all__ = ["OPERATOR_KEY_FILE", "DeviceRegistrar", "OperatorKey", "RegistryRecord", "registration_for"]

OPERATOR_KEY_FILE: Final = "operator.key"
OPERATOR_PUB_FILE: Final = "operator.pub"


class OperatorKey:
    """The composite signing key that enrols and revokes devices for the enclave."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key

    @classmethod
    def load_or_create(cls, key_dir: str | os.PathLike[str]) -> OperatorKey:
        """Load ``key_dir/operator.key``, generating it (0600) and ``operator.pub`` on first use."""
        d = Path(key_dir)
        path = d / OPERATOR_KEY_FILE
        passphrase = environment().server_key_passphrase
        if not path.exists():
            d.mkdir(parents=True, exist_ok=True)
            key = SigningKey.generate()
            write_private_key(path, key, token=TOKEN, passphrase=passphrase)
            write_public_key(d / OPERATOR_PUB_FILE, key.public_key())
            return cls(key)
        loaded = read_private_key(path, token=TOKEN, passphrase=passphrase)
        if not isinstance(loaded, SigningKey):
            raise ConfigError(f"{path} is not a composite signing key", reason="operator_key")
        return cls(loaded)

    @property
    def public_key(self) -> VerifyKey:
        return self._key.public_key()

    @property
    def public_hex(self) -> str:
        """The form pinned in ``EnclaveConfig.operator_key``."""
        return self._key.public_key().to_bytes().hex()

    def sign(self, registration: DeviceRegistration) -> tuple[bytes, bytes]:
        """``(statement, signature)`` for the enclave's ``register_device`` call."""
        return registration.to_bytes(), sign_registration(registration, self._key)


class RegistryRecord(Protocol):
    """What the registrar needs from a server device record (``qflare.server.storage.DeviceRecord``)."""

    @property
    def device_id(self) -> str: ...
    @property
    def public_key(self) -> bytes: ...
    @property
    def key_source(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def revoked_at(self) -> float | None: ...
    @property
    def max_examples(self) -> int | None: ...


def _ms(t: float) -> int:
    return max(0, int(math.floor(t * 1000))) if math.isfinite(t) else 0


def registration_for(record: RegistryRecord) -> DeviceRegistration:
    """The statement for a device record: enrolment at ``2 * created_ms``, revocation at ``2 * revoked_ms + 1``."""
    revoked = record.status == "revoked"
    when = record.revoked_at if revoked and record.revoked_at is not None else record.created_at
    sequence = 2 * _ms(when) + (1 if revoked else 0)
    return DeviceRegistration(
        device_id=record.device_id,
        public_key=bytes(record.public_key),
        key_source=record.key_source,
        status="revoked" if revoked else "active",
        sequence=sequence,
        max_examples=record.max_examples,
    )


class DeviceRegistrar:
    """Signs each device's current registration from the server's records (host side).

    Parameters
    ----------
    operator:
        The operator key pinned by the enclave.
    lookup:
        A device record by id (``Repository.get_device``), ``None`` for an unknown device.
    """

    def __init__(self, operator: OperatorKey, lookup: Callable[[str], RegistryRecord | None]) -> None:
        self.operator = operator
        self.lookup = lookup

    def current(self, device_id: str) -> DeviceRegistration | None:
        """The device's statement as the server's records stand now."""
        record = self.lookup(device_id)
        return None if record is None else registration_for(record)
