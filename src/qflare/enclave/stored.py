"""The bytes the server stores for an update the enclave accepted (``ValidatedUpdate.stored``).

Two forms, both opaque ciphertext to the server and both replayable only by an enclave with the same
measurement on the same platform::

    "QFS1" | sealed blob                 the update itself, sealed (purpose "update")
                                         -- for updates the host handed over in plaintext
    "QFS2" | u32 len || sealed blob | envelope
                                         the device's own envelope, kept as it arrived, plus a sealed
                                         blob (purpose "update-envelope") holding the envelope's
                                         header hash and the QKD key it needed, if any
                                         -- for updates that arrived as envelopes

The second form is envelope encryption: the update stays under the device's AES-256-GCM request key,
which the enclave can re-derive (its X-Wing key is sealed at rest), so the enclave does not re-encrypt
megabytes of update to seal it. The header hash inside the sealed blob binds it to exactly that
envelope. Either way, the sealed blob's public header is ``"QFUH" | u64 round id | 16-byte update
id``, which the host may read (:func:`stored_update_id`) and the enclave authenticates on replay.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from qflare.enclave.sealing import read_sealed_header
from qflare.errors import CryptoError

__all__ = [
    "ENVELOPE_PURPOSE",
    "UPDATE_PURPOSE",
    "StoredUpdate",
    "parse_update_header",
    "parse_stored",
    "stored_envelope",
    "stored_plaintext",
    "stored_update_id",
    "update_header",
]

UPDATE_PURPOSE: Final = "update"
ENVELOPE_PURPOSE: Final = "update-envelope"
_PLAIN: Final = b"QFS1"
_ENVELOPE: Final = b"QFS2"
_UPDATE_HEADER: Final = struct.Struct(">4sQ16s")
_UPDATE_MAGIC: Final = b"QFUH"


def update_header(round_id: int, update_id: str) -> bytes:
    """The public header of an update's sealed blob."""
    return _UPDATE_HEADER.pack(_UPDATE_MAGIC, round_id, bytes.fromhex(update_id))


def parse_update_header(header: bytes) -> tuple[int, str]:
    """``(round_id, update_id)`` from an update's sealed-blob header."""
    if len(header) != _UPDATE_HEADER.size:
        raise CryptoError("not a sealed update", reason="malformed_sealed_blob")
    magic, round_id, raw_id = _UPDATE_HEADER.unpack(header)
    if magic != _UPDATE_MAGIC:
        raise CryptoError("not a sealed update", reason="malformed_sealed_blob")
    return round_id, raw_id.hex()


@dataclass(frozen=True)
class StoredUpdate:
    """A stored update split into its parts (nothing authenticated yet)."""

    purpose: str
    sealed: bytes
    envelope: bytes | None


def stored_plaintext(prefix: bytes, ciphertext: bytes) -> tuple[bytes, ...]:
    """The parts of a ``QFS1`` stored update (write them back to back)."""
    return (_PLAIN, prefix, ciphertext)


def stored_envelope(sealed: bytes, envelope: bytes) -> tuple[bytes, ...]:
    """The parts of a ``QFS2`` stored update."""
    return (_ENVELOPE, struct.pack(">I", len(sealed)), sealed, envelope)


def parse_stored(data: bytes) -> StoredUpdate:
    """Split a stored update; raises ``CryptoError("malformed_sealed_blob")``."""
    bad = CryptoError("not a stored update", reason="malformed_sealed_blob")
    if data[:4] == _PLAIN:
        return StoredUpdate(purpose=UPDATE_PURPOSE, sealed=data[4:], envelope=None)
    if data[:4] == _ENVELOPE and len(data) >= 8:
        (n,) = struct.unpack(">I", data[4:8])
        if len(data) < 8 + n:
            raise bad
        return StoredUpdate(purpose=ENVELOPE_PURPOSE, sealed=data[8 : 8 + n], envelope=data[8 + n :])
    raise bad


def stored_update_id(data: bytes) -> tuple[int, str]:
    """``(round_id, update_id)`` from a stored update's public header (host side; not authenticated)."""
    parts = parse_stored(bytes(data))
    return parse_update_header(read_sealed_header(parts.sealed, purpose=parts.purpose))
