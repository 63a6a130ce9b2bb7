"""Test-only shortcuts into a simulated enclave's sealed state. Everything here is ``Unsafe*``.

A simulated platform keeps its sealing secret in a file, so a process that can read the platform
directory can unseal what the enclave sealed there. Tests use that to learn the enclave's private key
seeds (to look for them where they must not be); nothing else may.
"""

from __future__ import annotations

from pathlib import Path

from qflare.crypto.kem import SEED_SIZE as KEM_SEED_SIZE
from qflare.enclave.sealing import SealingKey
from qflare.enclave.trusted.platform import SEALING_SECRET_FILE

__all__ = ["unsafe_read_sealed_key_seeds"]


def unsafe_read_sealed_key_seeds(work_dir: str | Path, measurement: bytes) -> tuple[bytes, bytes]:
    """``(X-Wing seed, composite signing seed)`` of the simulated enclave with ``measurement`` in ``work_dir``.

    Raises
    ------
    CryptoError
        The sealed key file does not open with this platform and measurement.
    """
    root = Path(work_dir)
    secret = (root / "platform" / SEALING_SECRET_FILE).read_bytes()
    blob = (root / "state" / f"keys-{measurement.hex()[:16]}.sealed").read_bytes()
    _, seeds = SealingKey(secret, measurement).unseal(blob, purpose="enclave-keys")
    return seeds[:KEM_SEED_SIZE], seeds[KEM_SEED_SIZE:]
