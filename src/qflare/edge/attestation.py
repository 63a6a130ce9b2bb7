"""The device's check of the server's enclave: a fresh quote, verified before anything is sent to it.

The device sends a random nonce; the server's enclave answers with a quote whose report data binds its
public keys and that nonce, signed by the platform's attestation key. The device verifies the quote
against its pinned policy (measurement, signer, minimum security version, whether a simulated enclave
is acceptable) and only then takes the enclave's KEM key (to encrypt requests to) and signing key (to
verify tasks and models with).
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from qflare.config import AttestationConfig
from qflare.crypto import VerifyKey, XWingPublicKey
from qflare.errors import AttestationError, ConfigError, QFlareError

__all__ = ["AttestedEnclave", "attest", "load_trust_root"]


@dataclass(frozen=True)
class AttestedEnclave:
    """Keys of an enclave whose quote verified, and what the quote said."""

    kem: XWingPublicKey
    signing: VerifyKey
    measurement: str
    signer: str
    simulated: bool


def load_trust_root(path: Path) -> VerifyKey:
    try:
        return VerifyKey.from_bytes(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"attestation.trust_root_file: cannot read {path} ({exc.strerror})") from None
    except QFlareError as exc:
        raise ConfigError(f"attestation.trust_root_file: {path} is not an attestation key ({exc.message})") from None


def attest(http: httpx.Client, policy: AttestationConfig, trust_root: VerifyKey | None) -> AttestedEnclave:
    """Fetch a quote for a fresh nonce and verify it; raises :class:`AttestationError` with the reason."""
    from qflare.edge.client import ServerUnavailable, error_from_response
    from qflare.enclave.quote import EnclavePublicKeys
    from qflare.enclave.verify import verify_quote

    nonce = os.urandom(32)
    try:
        resp = http.get("/v1/enclave/attestation", params={"nonce": nonce.hex()})
    except httpx.TransportError as exc:
        raise ServerUnavailable(f"cannot reach server for attestation: {exc}") from None
    if resp.status_code >= 400:
        err = error_from_response(resp)
        raise AttestationError(f"the server offers no enclave quote: {err.message}", reason=err.reason)
    try:
        body = resp.json()
        quote = base64.b64decode(body["quote"], validate=True)
        keys = EnclavePublicKeys.decode(base64.b64decode(body["public_keys"], validate=True))
    except (ValueError, KeyError, TypeError, binascii.Error, QFlareError) as exc:
        raise AttestationError(f"malformed attestation answer: {exc}", reason="malformed_attestation") from None
    verified = verify_quote(
        quote,
        trust_root=trust_root,
        expected_measurement=policy.expected_measurement,
        expected_signer=policy.expected_signer,
        nonce=nonce,
        served_public_keys=keys,
        allow_simulated=policy.allow_simulated,
        min_svn=policy.min_svn,
    )
    return AttestedEnclave(
        kem=verified.public_keys.kem, signing=verified.public_keys.signing, measurement=verified.measurement.hex(),
        signer=verified.signer.hex(), simulated=verified.simulated,
    )
