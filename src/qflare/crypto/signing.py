"""Hybrid signatures: composite ML-DSA-65 + Ed25519 (id-MLDSA65-Ed25519-SHA512,
draft-ietf-lamps-pq-composite-sigs). Both components must verify.

>>> key = SigningKey.generate()
>>> sig = key.sign(b"task bytes", SigningContext.TASK)
>>> key.public_key().verify(sig, b"task bytes", SigningContext.TASK)
"""

from qflare.crypto._composite import (
    ALGORITHM,
    PUBLIC_KEY_SIZE,
    SEED_SIZE,
    SIGNATURE_SIZE,
    SigningKey,
    VerifyKey,
)
from qflare.crypto.contexts import SigningContext

__all__ = [
    "ALGORITHM",
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SIGNATURE_SIZE",
    "SigningContext",
    "SigningKey",
    "VerifyKey",
]
