"""QFLARE's cryptographic recipes layer (post-quantum hybrid, misuse-resistant).

Only the private ``_*.py`` modules of this package import ``cryptography.hazmat``. Use the public
modules:

- :mod:`qflare.crypto.envelope` - the per-request envelope: ``seal_request`` / ``ResponseOpener``
  on devices; ``parse_envelope``, ``check_timestamp``, ``verify_envelope_signature``,
  ``check_key_source``, ``decrypt_envelope`` / ``ResponseSealer`` on the server.
- :mod:`qflare.crypto.signing` - composite ML-DSA-65 + Ed25519 signatures with per-message-type
  :class:`SigningContext`.
- :mod:`qflare.crypto.kem` - X-Wing hybrid KEM (ML-KEM-768 + X25519).
- :mod:`qflare.crypto.aead` - AES-256-GCM with hidden nonces and required associated data.
- :mod:`qflare.crypto.keyfile` - the key file format, fingerprints.
- :mod:`qflare.crypto.secret_access` - ``TOKEN`` for private key export/import.
- :mod:`qflare.crypto.tls` - private CA, TLS server and mTLS client certificates.
- :mod:`qflare.crypto.bench` - per-request timing and wire overhead.
- :mod:`qflare.crypto.testing` - ``Unsafe*`` deterministic hooks, tests only.

Wire format and check order: ``docs/protocol.md``.
"""

from qflare.crypto.aead import Aead
from qflare.crypto.encoding import KeySource
from qflare.crypto.kem import XWingPrivateKey, XWingPublicKey
from qflare.crypto.signing import SigningContext, SigningKey, VerifyKey

__all__ = [
    "Aead",
    "KeySource",
    "SigningContext",
    "SigningKey",
    "VerifyKey",
    "XWingPrivateKey",
    "XWingPublicKey",
]
