"""Hybrid KEM: X-Wing (ML-KEM-768 + X25519), draft-connolly-cfrg-xwing-kem.

>>> server = XWingPrivateKey.generate()
>>> ss, ct = server.public_key().encapsulate()
>>> server.decapsulate(ct) == ss
True
"""

from qflare.crypto._xwing import (
    CIPHERTEXT_SIZE,
    PUBLIC_KEY_SIZE,
    SEED_SIZE,
    SHARED_SECRET_SIZE,
    XWingPrivateKey,
    XWingPublicKey,
)

__all__ = [
    "ALGORITHM",
    "CIPHERTEXT_SIZE",
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SHARED_SECRET_SIZE",
    "XWingPrivateKey",
    "XWingPublicKey",
]

ALGORITHM = "X-Wing"
"""Algorithm id in key files (draft-connolly-cfrg-xwing-kem, OID 1.3.6.1.4.1.62253.25722)."""
