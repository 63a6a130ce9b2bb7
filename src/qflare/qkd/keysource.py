"""Where a request's extra secret comes from: nothing (ML-KEM only), or a QKD key via ETSI 014.

The edge node is the *master* SAE: :meth:`KeyProvider.get_key` obtains a fresh ``(key_id, key)`` and
the request header carries ``key_id``. The server is the *slave* SAE: :meth:`KeyProvider.get_key_by_id`
fetches the same key from its KME. Modes:

``mlkem``
    :class:`MLKEMOnly` (the default): no QKD key; the request key comes from the hybrid KEM alone.
``qkd`` / ``hybrid``
    :class:`QKDKeySource`: a QKD key is *required* (alone, or mixed with the hybrid KEM secret, as
    the envelope decides). Any KME failure raises :class:`QKDError`; it never falls back to
    ``mlkem``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from qflare.crypto import KeySource
from qflare.errors import ConfigError, QKDError
from qflare.qkd.client import KMEClient
from qflare.qkd.keystore import QKDKey

__all__ = ["KeyProvider", "MLKEMOnly", "QKDKeySource", "make_key_source"]


class KeyProvider(ABC):
    """Supplies the QKD part of a request key, if any."""

    mode: KeySource

    @property
    def uses_qkd(self) -> bool:
        return self.mode is not KeySource.MLKEM

    @abstractmethod
    def get_key(self) -> QKDKey | None:
        """Master side: a fresh ``(key_id, key)``, or ``None`` when the mode uses no QKD key."""

    @abstractmethod
    def get_key_by_id(self, key_id: str, *, master_sae_id: str | None = None) -> bytes:
        """Slave side: the key the master obtained under ``key_id``."""


class MLKEMOnly(KeyProvider):
    """No QKD: :meth:`get_key` yields ``None``; a request that names a QKD key is refused."""

    mode = KeySource.MLKEM

    def get_key(self) -> None:
        return None

    def get_key_by_id(self, key_id: str, *, master_sae_id: str | None = None) -> bytes:
        raise QKDError("this node has no QKD key source, yet a QKD key_ID was sent", reason="qkd_not_configured")


class QKDKeySource(KeyProvider):
    """QKD keys through an ETSI GS QKD 014 KME; required, never silently skipped.

    Parameters
    ----------
    client:
        Client of this SAE's own KME.
    mode:
        ``qkd`` or ``hybrid`` (``mlkem`` is :class:`MLKEMOnly`).
    peer_sae_id:
        Master side: the slave SAE's ID (the server). Slave side: the default master SAE ID, which
        :meth:`get_key_by_id` can override per request (one server, many edge nodes).
    key_size_bits:
        Size of each key (a multiple of 8; 256 by default).
    master_sae_of:
        Slave side: maps a device ID to its master SAE ID for :meth:`lookup_for_request`
        (identity by default).
    """

    def __init__(
        self,
        client: KMEClient,
        *,
        mode: KeySource | str = KeySource.HYBRID,
        peer_sae_id: str | None = None,
        key_size_bits: int = 256,
        master_sae_of: Callable[[str], str] | None = None,
    ) -> None:
        try:
            self.mode = KeySource(mode)
        except ValueError:
            raise ConfigError(f"unknown key source mode {mode!r}", reason="invalid_key_source") from None
        if self.mode is KeySource.MLKEM:
            raise ConfigError("QKDKeySource needs mode 'qkd' or 'hybrid'", reason="invalid_key_source")
        if key_size_bits <= 0 or key_size_bits % 8:
            raise ConfigError("key_size_bits must be a positive multiple of 8", reason="invalid_key_source")
        self.client = client
        self.peer_sae_id = peer_sae_id
        self.key_size_bits = key_size_bits
        self.master_sae_of = master_sae_of

    def _peer(self, override: str | None) -> str:
        peer = override or self.peer_sae_id
        if not peer:
            raise ConfigError("no peer SAE ID configured for the QKD key source", reason="invalid_key_source")
        return peer

    def get_key(self) -> QKDKey:
        """A fresh key for the slave SAE (enc_keys); raises :class:`QKDError` on any KME failure."""
        (key,) = self.client.enc_keys(self._peer(None), number=1, size=self.key_size_bits)
        return key

    def get_key_by_id(self, key_id: str, *, master_sae_id: str | None = None) -> bytes:
        """The master's key ``key_id`` (dec_keys, delivered once); :class:`QKDError` on any failure."""
        (key,) = self.client.dec_keys(self._peer(master_sae_id), [key_id], size=self.key_size_bits)
        return key.key

    # Adapters to the shapes the edge client and the server gateway take.

    def fetch_for_request(self) -> tuple[bytes, tuple[str, ...]]:
        """Edge node: one fresh key and its ID, as ``(key, (key_id,))`` (``QKDKeyFetcher``)."""
        key = self.get_key()
        return key.key, (key.key_id,)

    def lookup_for_request(self, device_id: str, key_ids: tuple[str, ...]) -> bytes:
        """Server: the keys ``key_ids`` that device ``device_id`` obtained, concatenated in order
        (``QKDKeyLookup``). The device's master SAE ID is ``master_sae_of(device_id)``, by default
        the device ID itself (the CN of the device's certificate at its KME).

        Raises
        ------
        QKDError
            ``unknown_key_id`` if ``key_ids`` is empty; any KME failure.
        """
        if not key_ids:
            raise QKDError("the request names no QKD key_ID", reason="unknown_key_id")
        master = self.master_sae_of(device_id) if self.master_sae_of else device_id
        keys = self.client.dec_keys(master, list(key_ids), size=self.key_size_bits)
        return b"".join(k.key for k in keys)


def make_key_source(
    mode: KeySource | str,
    *,
    client: KMEClient | None = None,
    peer_sae_id: str | None = None,
    key_size_bits: int = 256,
) -> KeyProvider:
    """The key source for ``mode``; ``qkd``/``hybrid`` need a ``client`` (else :class:`ConfigError`)."""
    try:
        chosen = KeySource(mode)
    except ValueError:
        raise ConfigError(f"unknown key source mode {mode!r}", reason="invalid_key_source") from None
    if chosen is KeySource.MLKEM:
        return MLKEMOnly()
    if client is None:
        raise ConfigError(f"key source mode {chosen.value!r} needs a KME client", reason="invalid_key_source")
    return QKDKeySource(client, mode=chosen, peer_sae_id=peer_sae_id, key_size_bits=key_size_bits)
