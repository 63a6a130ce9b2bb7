"""Explicit permission to touch secret key material (modelled on Tink's ``secret_key_access``).

Functions that export or import private key bytes take a ``token`` argument that must be
:data:`TOKEN`. The point is not secrecy of the token (anyone can import it) but that every place
handling raw private keys says so in its source, where a reviewer can grep for it::

    from qflare.crypto import secret_access
    seed = key.private_bytes(secret_access.TOKEN)
"""

from __future__ import annotations

from typing import Final

__all__ = ["TOKEN", "SecretKeyAccess", "require_token"]


class SecretKeyAccess:
    """Marker type of :data:`TOKEN`. Do not instantiate; use :data:`TOKEN`."""

    __slots__ = ()
    _instance: SecretKeyAccess | None = None

    def __new__(cls) -> SecretKeyAccess:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "secret_access.TOKEN"


TOKEN: Final[SecretKeyAccess] = SecretKeyAccess()


def require_token(token: object) -> None:
    """Raise ``TypeError`` unless ``token`` is :data:`TOKEN`."""
    if token is not TOKEN:
        raise TypeError("this operation handles secret key material: pass token=secret_access.TOKEN")
