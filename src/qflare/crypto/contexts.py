"""Signing contexts: one per message type, so a signature over one kind of message can never be
replayed as another (FIPS 204 / composite ``ctx``).

Only members of :class:`SigningContext` are accepted by :meth:`SigningKey.sign`; a new message type
needs a new member here (ask the crypto owner), never an ad-hoc byte string.
"""

from __future__ import annotations

import enum

__all__ = ["SigningContext"]


class SigningContext(enum.Enum):
    """Per-message-type context strings (ASCII, at most 255 bytes, fed to the composite ``ctx``)."""

    REQUEST = b"qflare/v1/request"
    """A device request envelope (:mod:`qflare.crypto.envelope`)."""
    TASK = b"qflare/v1/task"
    """A round task published by the enclave (round id, global model hash, deadline)."""
    GLOBAL_MODEL = b"qflare/v1/global-model"
    """A new global model (or its hash) signed by the enclave."""
    ATTESTATION_QUOTE = b"qflare/v1/attestation-quote"
    """Report data / a simulated quote binding the enclave's public keys to its measurement."""
    TREE_HEAD = b"qflare/v1/ledger-tree-head"
    """A signed tree head of the ledger (RFC 9162 style)."""
    ENROLLMENT = b"qflare/v1/enrollment"
    """An operator's signature enrolling a device public key."""
    REVOCATION = b"qflare/v1/revocation"
    """An operator's signature revoking a device."""
    LEDGER_ENTRY = b"qflare/v1/ledger-entry"
    """A ledger entry signed by the party that knows its fact (the enclave for updates and aggregates)."""

    @property
    def ctx(self) -> bytes:
        """The context bytes."""
        return self.value
