"""The server's audit ledger service: :class:`AuditLog` appends canonical events and issues checkpoints.

The orchestrator, the device routes and the admin routes each call one method at the place the fact
is known (``docs/ledger.md``, "Server integration"). Entries go through
:class:`qflare.ledger.TransparencyLog` into :class:`qflare.server.storage.ledger_store.SqlLogStore`
(one transaction per call). A signed checkpoint is issued after every round close or failure, and
by :meth:`AuditLog.tick` when entries were added and ``checkpoint_interval`` seconds have passed.

Not done yet (stated in ``docs/ledger.md``): checkpoints are signed with the server's local composite
key (:class:`qflare.server.keys.ServerKeys`), also when an enclave runs, and the update/aggregate
entries are written by the host, not by the enclave.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence

from qflare.crypto.secret_access import TOKEN
from qflare.crypto.signing import SigningKey
from qflare.errors import Conflict
from qflare.ledger import HybridLogKey, HybridNoteSigner, LedgerEvent, TransparencyLog
from qflare.ledger.entries import (
    AggregatePublished,
    DeviceEnrolled,
    DeviceRevoked,
    RoundClosed,
    RoundFailed,
    RoundOpened,
    UpdateAccepted,
    UpdateRefused,
)
from qflare.server.storage.ledger_store import SqlLogStore

__all__ = ["DEFAULT_ORIGIN", "AuditLog"]

log = logging.getLogger("qflare.ledger")

DEFAULT_ORIGIN = "qflare.local/ledger"
CHECKPOINT_INTERVAL_SECONDS = 60.0


def _ms(t: float) -> int:
    return max(0, int(round(t * 1000)))


class AuditLog:
    """Appends QFLARE events to the transparency log and issues signed checkpoints.

    A failing append (e.g. the database briefly locked) never breaks the server's own work: the
    events are kept in memory and written before the next ones, in order; the failure is logged.

    Parameters
    ----------
    store:
        The SQL log store (shares the repository's database).
    signing_key:
        The composite ML-DSA-65 + Ed25519 key whose halves sign checkpoints.
    origin:
        The checkpoint origin line.
    clock:
        Seconds since the epoch.
    """

    def __init__(
        self,
        store: SqlLogStore,
        signing_key: SigningKey,
        *,
        origin: str = DEFAULT_ORIGIN,
        clock: Callable[[], float],
        checkpoint_interval: float = CHECKPOINT_INTERVAL_SECONDS,
    ) -> None:
        self.store = store
        self.signer = HybridNoteSigner(origin, signing_key, TOKEN)
        self.log = TransparencyLog(store, origin=origin, signer=self.signer)
        self.clock = clock
        self.checkpoint_interval = checkpoint_interval
        self.lock = threading.RLock()  # writers and the read API (proofs read the in-memory tree)
        self._pending: list[LedgerEvent] = []
        latest = store.latest_checkpoint()
        self._checkpointed_size = latest.size if latest is not None else -1
        self._last_checkpoint_at = clock()

    @property
    def origin(self) -> str:
        return self.log.origin

    @property
    def log_key(self) -> HybridLogKey:
        return self.signer.log_key()

    # -- writing ---------------------------------------------------------------------------------
    def record(self, *events: LedgerEvent) -> None:
        """Append ``events`` (one batch, one transaction) after any still pending from a failure."""
        with self.lock:
            self._pending.extend(events)
            self._flush()

    def _flush(self) -> bool:
        if not self._pending:
            return True
        try:
            try:
                self.log.append_events(self._pending)
            except Conflict:  # another writer on the same database: catch up and append after it
                self.log.refresh()
                self.log.append_events(self._pending)
        except Exception:  # noqa: BLE001 - the audit log must not fail the server's work; kept for retry
            log.exception("ledger append failed; %d events kept for the next attempt", len(self._pending))
            return False
        self._pending.clear()
        return True

    def checkpoint(self) -> bytes | None:
        """Flush and issue a signed checkpoint for the current size (``None`` if that failed)."""
        with self.lock:
            if not self._flush():
                return None
            try:
                note = self.log.checkpoint()
            except Exception:  # noqa: BLE001 - retried at the next tick
                log.exception("ledger checkpoint failed")
                return None
            self._checkpointed_size = self.log.size()
            self._last_checkpoint_at = self.clock()
            return note

    def tick(self) -> None:
        """Issue a checkpoint when the log grew and ``checkpoint_interval`` passed (the server's ticker)."""
        with self.lock:
            self._flush()
            due = self.clock() - self._last_checkpoint_at >= self.checkpoint_interval
            grew = self.log.size() != self._checkpointed_size
        if due and grew:
            self.checkpoint()

    # -- the facts -------------------------------------------------------------------------------
    def device_enrolled(self, device_id: str, public_key: bytes) -> None:
        self.record(DeviceEnrolled(device_id, hashlib.sha256(public_key).hexdigest(), _ms(self.clock())))

    def device_revoked(self, device_id: str, reason: str = "operator") -> None:
        self.record(DeviceRevoked(device_id, reason, _ms(self.clock())))

    def round_opened(self, round_id: int, model_sha256: str, rule: str, deadline_at: float) -> None:
        self.record(RoundOpened(round_id, model_sha256, rule, _ms(deadline_at), _ms(self.clock())))

    def update_accepted(
        self, device_id: str, round_id: int, sha256: str, num_examples: int, norm: float | None
    ) -> None:
        # The rule's verdict: "accepted" with the norm the backend computed; when no norm bound is
        # configured the backend computes none and the entry says so (norm 0).
        verdict = "accepted" if norm is not None else "accepted_norm_unchecked"
        self.record(UpdateAccepted(device_id, round_id, sha256, num_examples, float(norm or 0.0), verdict,
                                   _ms(self.clock())))

    def update_refused(self, reason: str, device_id: str | None, round_id: int | None) -> None:
        self.record(UpdateRefused(reason, device_id, round_id, _ms(self.clock())))

    def round_closed(
        self, round_id: int, model_sha256: str, rule: str, participants: Sequence[tuple[str, int]]
    ) -> None:
        """The round aggregated: ``round_closed`` and ``aggregate_published`` (weights = sample counts),
        then a checkpoint."""
        now = _ms(self.clock())
        weights = tuple((d, float(n)) for d, n in participants)
        self.record(
            RoundClosed(round_id, len(participants), now),
            AggregatePublished(round_id, model_sha256, rule, {"weighting": "num_examples"}, weights, now),
        )
        self.checkpoint()

    def round_failed(self, round_id: int, reason: str) -> None:
        self.record(RoundFailed(round_id, reason, _ms(self.clock())))
        self.checkpoint()
