"""The server's side of the enclave boundary: an envelope opener over :class:`EnclaveAggregator`.

With an enclave, the web process keeps the cheap checks (size, device, revocation, timestamp, nonce,
signature) and hands envelopes to the enclave, which alone holds the X-Wing private key: small
requests come back decrypted (their payloads are not secret from the host), update uploads stay
sealed and go to the enclave's aggregation backend whole.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qflare.crypto import KeySource, XWingPublicKey
from qflare.crypto.envelope import Envelope
from qflare.enclave.backend import EnclaveAggregator
from qflare.server.keys import Sealer

if TYPE_CHECKING:
    from qflare.server.enclave_service import RemoteEnclaveAggregator


@dataclass(frozen=True)
class _EnclaveSealer:
    aggregator: EnclaveAggregator | RemoteEnclaveAggregator
    request_hash: bytes

    def seal(self, payload: bytes) -> bytes:
        return self.aggregator.seal_response(self.request_hash, payload)


class EnclaveOpener:
    """A :class:`~qflare.server.keys.RequestOpener` whose private key lives in the enclave."""

    opens_updates = False

    def __init__(self, aggregator: EnclaveAggregator | RemoteEnclaveAggregator) -> None:
        self.aggregator = aggregator

    def kem_public_key(self) -> XWingPublicKey:
        return self.aggregator.public_keys().kem

    def open(
        self, envelope: Envelope, *, allowed_key_sources: Collection[KeySource | str], extra_secret: bytes | None
    ) -> tuple[bytes, Sealer]:
        opened = self.aggregator.open_request(
            envelope.raw, allowed_key_sources=[str(KeySource(s).value) for s in allowed_key_sources],
            extra_secret=extra_secret,
        )
        return opened.payload, _EnclaveSealer(self.aggregator, opened.request_hash)

    def update_sealer(self, envelope: Envelope) -> Sealer:
        # The enclave answers the upload under the response key it derived while validating it; it
        # knows the request by the SHA-256 of its header.
        return _EnclaveSealer(self.aggregator, envelope.header_hash)
