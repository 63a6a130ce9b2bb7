"""What the enclave asks of the platform: a sealing root, its own identity, and quotes.

:class:`SimulatedPlatform` stands in for the CPU with files in a platform directory, created once by
the first enclave that runs there::

    attestation-key.seed   64 bytes, 0600   the simulated quoting key (composite ML-DSA-65 + Ed25519)
    attestation-root.pub   1984 bytes       its public key: the trust root verifiers pin
    sealing-secret         32 bytes, 0600   the root of every sealing key (the CPU's fused seal secret)

Only the enclave process reads the private files; the host reads the public trust root. Anyone with
the same user id (or root) can read them too: the simulation models the interfaces, not the hardware
(``docs/enclave.md``).

:class:`SgxPlatform` is the same interface over Gramine's ``/dev/attestation`` pseudo-files on SGX.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from qflare.crypto import secret_access
from qflare.crypto.aead import Aead
from qflare.crypto.signing import SEED_SIZE, SigningKey, VerifyKey
from qflare.enclave.quote import (
    QUOTE_CONTEXT,
    encode_dcap_wrapper,
    encode_simulated_quote,
    encode_simulated_quote_body,
)
from qflare.enclave.trusted.storage import create_exclusive, read_file
from qflare.errors import EnclaveError

__all__ = [
    "ATTESTATION_KEY_FILE",
    "SEALING_SECRET_FILE",
    "TRUST_ROOT_FILE",
    "Platform",
    "PlatformIdentity",
    "SgxPlatform",
    "SimulatedPlatform",
    "parse_report_body",
]

ATTESTATION_KEY_FILE: Final = "attestation-key.seed"
TRUST_ROOT_FILE: Final = "attestation-root.pub"
SEALING_SECRET_FILE: Final = "sealing-secret"
_SEALING_SECRET_SIZE: Final = 32

# SGX REPORTBODY offsets (Intel SDM vol. 3D, 38.15; the same 384 bytes follow the 48-byte quote header).
_BODY_SIZE: Final = 384
_ATTR_FLAGS: Final = 48
_MRENCLAVE: Final = 64
_MRSIGNER: Final = 128
_ISVPRODID: Final = 256
_ISVSVN: Final = 258
_REPORTDATA: Final = 320
_FLAG_DEBUG: Final = 0x02


@dataclass(frozen=True)
class PlatformIdentity:
    """The identity a quote states: measurement, signer, product id, SVN, debug."""

    measurement: bytes
    signer: bytes
    isv_prod_id: int
    isv_svn: int
    debug: bool


class Platform(Protocol):
    """The platform services an enclave uses."""

    name: str
    simulated: bool

    def sealing_root(self) -> bytes:
        """Secret input to every sealing key; bound to this platform (and, on SGX, to MRENCLAVE)."""

    def quote(self, identity: PlatformIdentity, *, report_data: bytes, nonce: bytes) -> bytes:
        """A quote over ``identity`` and ``report_data``, verifiable against the platform's trust root."""


class SimulatedPlatform:
    """A simulated platform in a directory (see the module docstring for its files).

    Parameters
    ----------
    directory:
        The platform directory; created and provisioned on first use.
    """

    name = "simulated"
    simulated = True

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._dir = directory
        key_path = directory / ATTESTATION_KEY_FILE
        seed = read_file(key_path, max_size=SEED_SIZE)
        if seed is None:
            fresh = SigningKey.generate()
            # Publish the trust root before the key, so that a key never exists without its root.
            pub = fresh.public_key().to_bytes()
            create_exclusive(directory / TRUST_ROOT_FILE, pub, mode=0o644)
            create_exclusive(key_path, fresh.private_bytes(secret_access.TOKEN), mode=0o600)
            seed = read_file(key_path, max_size=SEED_SIZE)
        secret_path = directory / SEALING_SECRET_FILE
        if read_file(secret_path, max_size=_SEALING_SECRET_SIZE) is None:
            create_exclusive(secret_path, Aead.generate_key(), mode=0o600)
        secret = read_file(secret_path, max_size=_SEALING_SECRET_SIZE)
        root = read_file(directory / TRUST_ROOT_FILE, max_size=4096)
        if seed is None or len(seed) != SEED_SIZE or secret is None or len(secret) != _SEALING_SECRET_SIZE:
            raise EnclaveError(f"simulated platform files in {directory} are damaged", reason="platform_damaged")
        self._key = SigningKey.from_seed(seed, secret_access.TOKEN)
        if root is None or VerifyKey.from_bytes(root) != self._key.public_key():
            raise EnclaveError(
                f"simulated platform trust root in {directory} does not match its key", reason="platform_damaged"
            )
        self._secret = secret

    def sealing_root(self) -> bytes:
        return self._secret

    def quote(self, identity: PlatformIdentity, *, report_data: bytes, nonce: bytes) -> bytes:
        body = encode_simulated_quote_body(
            measurement=identity.measurement,
            signer=identity.signer,
            isv_prod_id=identity.isv_prod_id,
            isv_svn=identity.isv_svn,
            debug=identity.debug,
            nonce=nonce,
            report_data=report_data,
        )
        return encode_simulated_quote(body, self._key.sign(body, QUOTE_CONTEXT))

    def __repr__(self) -> str:
        return f"SimulatedPlatform({self._dir})"


def parse_report_body(body: bytes) -> tuple[PlatformIdentity, bytes]:
    """``(identity, report_data)`` from a 384-byte SGX REPORTBODY."""
    if len(body) < _BODY_SIZE:
        raise EnclaveError("SGX report body is truncated", reason="sgx_report_invalid")
    flags = int.from_bytes(body[_ATTR_FLAGS : _ATTR_FLAGS + 8], "little")
    (prod_id, svn) = struct.unpack("<HH", body[_ISVPRODID : _ISVSVN + 2])
    identity = PlatformIdentity(
        measurement=bytes(body[_MRENCLAVE : _MRENCLAVE + 32]),
        signer=bytes(body[_MRSIGNER : _MRSIGNER + 32]),
        isv_prod_id=prod_id,
        isv_svn=svn,
        debug=bool(flags & _FLAG_DEBUG),
    )
    return identity, bytes(body[_REPORTDATA : _REPORTDATA + 64])


class SgxPlatform:
    """SGX under Gramine, through ``/dev/attestation`` (needs ``sgx.remote_attestation = "dcap"``).

    Parameters
    ----------
    attestation_dir:
        Gramine's attestation pseudo-filesystem; a parameter so tests can point it elsewhere.
    """

    name = "sgx"
    simulated = False

    def __init__(self, attestation_dir: Path = Path("/dev/attestation")) -> None:
        self._dir = attestation_dir
        if not (attestation_dir / "quote").exists():
            raise EnclaveError(
                f"{attestation_dir}/quote is missing: not running under Gramine-SGX with DCAP attestation",
                reason="sgx_unavailable",
            )

    def sealing_root(self) -> bytes:
        # The MRENCLAVE-policy seal key from EGETKEY; only this enclave build on this CPU derives it.
        return (self._dir / "keys" / "_sgx_mrenclave").read_bytes()

    def self_identity(self) -> PlatformIdentity:
        """This enclave's MRENCLAVE, MRSIGNER, ISVPRODID, ISVSVN and debug bit, from a local report."""
        target = (self._dir / "my_target_info").read_bytes()
        (self._dir / "target_info").write_bytes(target)
        (self._dir / "user_report_data").write_bytes(bytes(64))
        report = (self._dir / "report").read_bytes()
        return parse_report_body(report[:_BODY_SIZE])[0]

    def quote(self, identity: PlatformIdentity, *, report_data: bytes, nonce: bytes) -> bytes:
        # ``identity`` is what the CPU puts in the quote anyway; the enclave cannot choose it.
        (self._dir / "user_report_data").write_bytes(report_data)
        return encode_dcap_wrapper((self._dir / "quote").read_bytes(), nonce)

    def __repr__(self) -> str:
        return f"SgxPlatform({self._dir})"
