"""Request nonces and KEM ciphertext hashes: the replay window."""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from qflare.errors import ReplayDetected
from qflare.server.storage.engine import StoreBase
from qflare.server.storage.records import (
    KEM_CIPHERTEXT_SCOPE,
)
from qflare.server.storage.tables import Device, Nonce


class NonceStore(StoreBase):
    """Request nonces and KEM ciphertext hashes: the replay window."""

    def nonce_seen(self, device_id: str, nonce: str) -> bool:
        with self.engine.connect() as c:
            q = select(Nonce.expires_at).where(Nonce.device_id == device_id, Nonce.nonce == nonce)
            return c.execute(q).first() is not None

    def record_nonce(self, device_id: str, nonce: str, *, expires_at: float) -> None:
        """Insert the nonce; the primary key makes a concurrent second use fail atomically (ReplayDetected)."""
        try:
            with self.engine.begin() as c:
                c.execute(insert(Nonce).values(device_id=device_id, nonce=nonce, expires_at=expires_at))
        except IntegrityError:
            raise ReplayDetected("this request was seen before") from None

    def record_request(self, device_id: str, nonce: str, kem_ciphertext_id: str | None, *, expires_at: float,
                       seen_at: float | None = None, seen_interval: float = 0.0) -> None:
        """Record a request's nonce and its KEM ciphertext's hash in one transaction: both or neither.

        ``seen_at``: also set the device's ``last_seen_at`` in that transaction (skipped if it was set less
        than ``seen_interval`` seconds before), so a request costs one commit, not two; a refused copy
        (replay) rolls it back with the nonce.

        Raises ``ReplayDetected``: ``replay`` for a nonce this device used before,
        ``kem_ciphertext_reused`` for a KEM ciphertext seen before (from any device) within the window.
        """
        try:
            with self.engine.begin() as c:
                c.execute(insert(Nonce).values(device_id=device_id, nonce=nonce, expires_at=expires_at))
                if kem_ciphertext_id is not None:
                    try:
                        c.execute(insert(Nonce).values(device_id=KEM_CIPHERTEXT_SCOPE, nonce=kem_ciphertext_id,
                                                       expires_at=expires_at))
                    except IntegrityError:
                        raise ReplayDetected("this KEM ciphertext was used before: one request, one key",
                                             reason="kem_ciphertext_reused") from None
                if seen_at is not None:
                    c.execute(update(Device).where(Device.device_id == device_id).where(
                        Device.last_seen_at.is_(None) | (Device.last_seen_at < seen_at - seen_interval))
                        .values(last_seen_at=seen_at))
        except IntegrityError:
            raise ReplayDetected("this request was seen before") from None

    def purge_nonces(self, *, now: float) -> int:
        with self._tx() as s:
            result = s.execute(delete(Nonce).where(Nonce.expires_at < now))
            return int(getattr(result, "rowcount", 0) or 0)

    def count_nonces(self) -> int:
        with self._tx() as s:
            q = select(func.count()).select_from(Nonce).where(Nonce.device_id != KEM_CIPHERTEXT_SCOPE)
            return int(s.scalar(q) or 0)
