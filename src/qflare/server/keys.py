"""The server's long-term keys and the component that opens request envelopes with them.

``LocalOpener`` keeps the X-Wing private key in this process. The enclave backend replaces it with an
opener whose private key never leaves the enclave process; the gateway only sees the
:class:`RequestOpener` protocol.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from qflare.crypto import KeySource, SigningKey, XWingPrivateKey, XWingPublicKey
from qflare.crypto.envelope import Envelope, decrypt_envelope
from qflare.crypto.keyfile import fingerprint, read_private_key, write_private_key, write_public_key
from qflare.crypto.secret_access import TOKEN
from qflare.crypto.signing import VerifyKey
from qflare.environment import SERVER_KEY_PASSPHRASE_ENV, environment
from qflare.errors import ConfigError

KEM_KEY_FILE = "server-kem.key"
KEM_PUB_FILE = "server-kem.pub"
SIGN_KEY_FILE = "server-sign.key"
SIGN_PUB_FILE = "server-sign.pub"
PASSPHRASE_ENV = SERVER_KEY_PASSPHRASE_ENV


class Sealer(Protocol):
    """Seals the one response to one request."""

    def seal(self, payload: bytes) -> bytes: ...


class RequestOpener(Protocol):
    """Holds the server KEM private key; decapsulates and decrypts request envelopes.

    ``opens_updates`` says whether update uploads are decrypted here too. An enclave opener says no:
    the update envelope goes to the aggregation backend still sealed, and :meth:`update_sealer`
    answers it.
    """

    opens_updates: bool

    def kem_public_key(self) -> XWingPublicKey: ...

    def open(
        self, envelope: Envelope, *, allowed_key_sources: Collection[KeySource | str], extra_secret: bytes | None
    ) -> tuple[bytes, Sealer]: ...

    def update_sealer(self, envelope: Envelope) -> Sealer: ...


@dataclass(frozen=True)
class ServerKeys:
    """The server's X-Wing KEM key pair and composite signing key."""

    kem: XWingPrivateKey
    signing: SigningKey

    @property
    def kem_public(self) -> XWingPublicKey:
        return self.kem.public_key()

    @property
    def signing_public(self) -> VerifyKey:
        return self.signing.public_key()

    @classmethod
    def load_or_create(cls, key_dir: str | Path) -> ServerKeys:
        """Load the keys from ``key_dir``, generating them on first start (private files mode 0600)."""
        d = Path(key_dir)
        passphrase = environment().server_key_passphrase
        kem_path, sign_path = d / KEM_KEY_FILE, d / SIGN_KEY_FILE
        if kem_path.exists() != sign_path.exists():
            raise ConfigError(f"{d}: found only one of {KEM_KEY_FILE} and {SIGN_KEY_FILE}", reason="server_keys")
        if not kem_path.exists():
            d.mkdir(parents=True, exist_ok=True)
            keys = cls(kem=XWingPrivateKey.generate(), signing=SigningKey.generate())
            write_private_key(kem_path, keys.kem, token=TOKEN, passphrase=passphrase)
            write_private_key(sign_path, keys.signing, token=TOKEN, passphrase=passphrase)
            write_public_key(d / KEM_PUB_FILE, keys.kem_public)
            write_public_key(d / SIGN_PUB_FILE, keys.signing_public)
            return keys
        kem = read_private_key(kem_path, token=TOKEN, passphrase=passphrase)
        sign = read_private_key(sign_path, token=TOKEN, passphrase=passphrase)
        if not isinstance(kem, XWingPrivateKey) or not isinstance(sign, SigningKey):
            raise ConfigError(f"{d}: server key files hold the wrong key types", reason="server_keys")
        return cls(kem=kem, signing=sign)

    def fingerprint(self) -> str:
        return fingerprint(self.kem_public)


class LocalOpener:
    """Opens envelopes in this process (``enclave.backend: none``)."""

    opens_updates = True

    def __init__(self, keys: ServerKeys) -> None:
        self._keys = keys

    def update_sealer(self, envelope: Envelope) -> Sealer:
        raise TypeError("LocalOpener decrypts updates itself: use open()")

    def kem_public_key(self) -> XWingPublicKey:
        return self._keys.kem_public

    def open(
        self, envelope: Envelope, *, allowed_key_sources: Collection[KeySource | str], extra_secret: bytes | None
    ) -> tuple[bytes, Sealer]:
        return decrypt_envelope(
            envelope, self._keys.kem, allowed_key_sources=allowed_key_sources, extra_secret=extra_secret
        )
