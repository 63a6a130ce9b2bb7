"""The server's audit ledger service: :class:`AuditLog` appends canonical events and issues checkpoints.

The orchestrator, the device routes and the admin routes each call one method at the place the fact
is known (``docs/ledger.md``, "Server integration"). Entries go through
:class:`qflare.ledger.TransparencyLog` into :class:`qflare.server.storage.ledger_store.SqlLogStore`
(one transaction per call). A signed checkpoint is issued after every round close or failure, and
by :meth:`AuditLog.tick` when entries were added and ``checkpoint_interval`` seconds have passed.

Checkpoints are signed by the enclave when one runs (:class:`EnclaveNoteSigner`, the ``sign_note``
ecall: the log key is the enclave's composite signing key), else with the server's local composite key
(:class:`qflare.server.keys.ServerKeys`). The ``update_accepted`` and ``aggregate_published`` entries
carry a producer signature under the log key (``docs/ledger.md``, "Signed entries"): behind an enclave
the enclave makes and signs them (the host only appends its bytes), in process the server signs them.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, TypeVar

from qflare.crypto.secret_access import TOKEN
from qflare.crypto.signing import SigningKey, VerifyKey
from qflare.errors import Conflict, LedgerIntegrityError, MalformedPayload, NotFound
from qflare.ledger import HybridLogKey, HybridNoteSigner, LedgerEvent, NoteSignature, TransparencyLog
from qflare.ledger.checkpoint import parse_checkpoint
from qflare.ledger.cosignature import CosignatureVerifier
from qflare.ledger.entries import (
    AggregatePublished,
    DeviceEnrolled,
    DeviceRevoked,
    EnclaveQuotePublished,
    KeySourceRefused,
    QkdLinkAborted,
    RoundClosed,
    RoundFailed,
    RoundOpened,
    UpdateAccepted,
    UpdateRefused,
    decode_event,
    encode_event,
    sign_entry,
    verify_entry,
)
from qflare.ledger.merkle import leaf_hash
from qflare.ledger.note import NoteSigner, parse_note, parse_verifier_key
from qflare.ledger.witness import parse_add_checkpoint_response
from qflare.server.storage.ledger_store import SqlLogStore

__all__ = ["DEFAULT_ORIGIN", "LOG_KEY_FILE", "AuditLog", "EnclaveNoteSigner", "LocalNoteSigner"]

log = logging.getLogger("qflare.ledger")

DEFAULT_ORIGIN = "qflare.local/ledger"
CHECKPOINT_INTERVAL_SECONDS = 60.0
_MAX_RECEIPTS = 100_000
_MAX_WITNESSES = 32
LOG_KEY_FILE = "ledger-log.pub"
"""The log key's public file in the server's key directory (written at start: the enclave's signing key
when an enclave runs, else a copy of ``server-sign.pub``); devices and ``qflare ledger verify`` pin it."""


Produced = TypeVar("Produced", UpdateAccepted, AggregatePublished)


class Outbox(Protocol):
    """Where the database keeps entries committed with their facts (``Repository``, ``storage/outbox.py``)."""

    def claim_ledger_entries(self, limit: int = 1000) -> AbstractContextManager[list[bytes]]: ...


class _DrainFailed(Exception):
    pass
# The fields on which an enclave-made entry must agree with the host's own view of the fact.
_AGREE: dict[type[LedgerEvent], tuple[str, ...]] = {
    UpdateAccepted: ("device_id", "round_id", "envelope_sha256", "sample_count"),
    AggregatePublished: ("round_id", "model_sha256"),
}


def _ms(t: float) -> int:
    return max(0, int(round(t * 1000)))


class LogSigner(NoteSigner, Protocol):
    """A checkpoint signer that also names its public log key."""

    @property
    def public_key(self) -> VerifyKey: ...

    def log_key(self) -> HybridLogKey: ...

    def sign_entry(self, event: Produced) -> Produced | None:
        """``event`` with its producer signature, or ``None`` if this signer does not sign entries (an
        enclave signs its own entries inside)."""


class LocalNoteSigner(HybridNoteSigner):
    """:class:`HybridNoteSigner` over a host-held composite key (no enclave): it signs entries too."""

    def __init__(self, origin: str, key: SigningKey) -> None:
        super().__init__(origin, key, TOKEN)
        self.public_key = key.public_key()
        self._key = key

    def sign_entry(self, event: Produced) -> Produced | None:
        return sign_entry(event, self._key)


class EnclaveNoteSigner:
    """Checkpoint signatures made inside the enclave (the ``sign_note`` ecall) with its hybrid key.

    The host never holds the log key: it hands the enclave the checkpoint body and gets back the
    Ed25519 (type 0x01) and ML-DSA-65 (type 0xff) signature lines, which it checks against the
    enclave's public signing key before they go into a note.

    Parameters
    ----------
    origin:
        The log origin (must equal the enclave's measured ``EnclaveConfig.ledger_origin``).
    sign:
        ``(text, consistency proof) -> signature lines``
        (:meth:`qflare.enclave.backend.EnclaveAggregator.sign_note`).
    public_key:
        The enclave's composite signing public key (``EnclavePublicKeys.signing``).
    head:
        ``() -> (size, root)`` of the last checkpoint the enclave signed
        (:meth:`~qflare.enclave.backend.EnclaveAggregator.ledger_head`): the checkpoint to sign is proven
        consistent with it through :attr:`prover`.
    """

    def __init__(
        self,
        origin: str,
        sign: Callable[[bytes, Sequence[bytes]], bytes],
        public_key: VerifyKey,
        head: Callable[[], tuple[int, bytes]] | None = None,
    ) -> None:
        self._sign = sign
        self._head = head
        self.public_key = public_key
        self._key = HybridLogKey.from_verify_key(origin, public_key)
        self.prover: Callable[[int, int], list[bytes]] | None = None
        """``(size1, size2) -> consistency proof`` of the log being signed (set by :class:`AuditLog`)."""

    def log_key(self) -> HybridLogKey:
        return self._key

    def sign_entry(self, event: Produced) -> Produced | None:
        return None  # the enclave signs its entries where it makes them (validate_update, finalize)

    def sign_note(self, text: bytes) -> list[NoteSignature]:
        """Raises ``LedgerIntegrityError`` if the enclave's lines do not verify under its key
        (``invalid_signature`` / ``missing_signature_half``), or the enclave's refusal."""
        proof: list[bytes] = []
        if self._head is not None:
            # The enclave signs only a checkpoint that extends the last one it signed: prove it.
            signed_size, _ = self._head()
            size = parse_checkpoint(bytes(text)).size
            if 0 < signed_size < size and self.prover is not None:
                proof = self.prover(signed_size, size)
        lines = self._sign(bytes(text), proof)
        note = bytes(text) + b"\n" + lines
        self._key.open(note)
        _, sigs = parse_note(note)
        return sigs


_APPEND_ATTEMPTS = 8  # appends racing other workers' (each retry first catches up with them)


class AuditLog:
    """Appends QFLARE events to the transparency log and issues signed checkpoints.

    A failing append (e.g. the database briefly locked) never breaks the server's own work: the
    events are kept in memory and written before the next ones, in order; the failure is logged.

    Parameters
    ----------
    store:
        The SQL log store (shares the repository's database).
    signing_key:
        The composite ML-DSA-65 + Ed25519 key whose halves sign checkpoints (host-held; used when
        ``signer`` is not given), or ``None`` with ``signer``.
    origin:
        The checkpoint origin line.
    clock:
        Seconds since the epoch.
    """

    def __init__(
        self,
        store: SqlLogStore,
        signing_key: SigningKey | None = None,
        *,
        origin: str = DEFAULT_ORIGIN,
        clock: Callable[[], float],
        checkpoint_interval: float = CHECKPOINT_INTERVAL_SECONDS,
        signer: LogSigner | None = None,
    ) -> None:
        if (signing_key is None) == (signer is None):
            raise ValueError("give exactly one of signing_key and signer")
        self.store = store
        if signer is None:
            assert signing_key is not None
            signer = LocalNoteSigner(origin, signing_key)
        self.signer: LogSigner = signer
        self.log = TransparencyLog(store, origin=origin, signer=self.signer)
        if isinstance(signer, EnclaveNoteSigner):
            signer.prover = self.log.consistency_proof
        self.clock = clock
        self.checkpoint_interval = checkpoint_interval
        self.lock = threading.RLock()  # writers and the read API (proofs read the in-memory tree)
        self._pending: list[LedgerEvent] = []
        self._enclave: tuple[bytes, str] | None = None  # the enclave identity last logged
        # envelope SHA-256 -> (leaf index, leaf hash) of its update_accepted entry, for the upload receipt
        self._receipts: dict[str, tuple[int, bytes]] = {}
        # checkpoint body -> cosignature lines pushed by witnesses (served beside the checkpoint)
        self._cosignatures: dict[bytes, dict[tuple[str, int], NoteSignature]] = {}
        latest = store.latest_checkpoint()
        self._checkpointed_size = latest.size if latest is not None else -1
        self._last_checkpoint_at = clock()

    @property
    def origin(self) -> str:
        return self.log.origin

    @property
    def log_key(self) -> HybridLogKey:
        return self.signer.log_key()

    def write_log_key(self, key_dir: str | Path) -> Path:
        """Write the composite public key whose halves verify the checkpoints to ``key_dir/LOG_KEY_FILE``
        (what devices and ``qflare ledger verify`` pin)."""
        from qflare.crypto.keyfile import write_public_key

        Path(key_dir).mkdir(parents=True, exist_ok=True)
        return write_public_key(Path(key_dir) / LOG_KEY_FILE, self.signer.public_key)

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
            for attempt in range(_APPEND_ATTEMPTS):
                try:
                    first = self.log.append_events(self._pending)
                    break
                except (Conflict, LedgerIntegrityError) as exc:
                    # Another writer on the same database (another worker) appended: catch up and append
                    # after it. Behind mid-tile, the stored tile is longer than this view expects (tile_missing).
                    if (isinstance(exc, LedgerIntegrityError) and exc.reason != "tile_missing") or \
                            attempt == _APPEND_ATTEMPTS - 1:
                        raise
                    self.log.refresh()
        except Exception:  # noqa: BLE001 - the audit log must not fail the server's work; kept for retry
            log.exception("ledger append failed; %d events kept for the next attempt", len(self._pending))
            return False
        for offset, event in enumerate(self._pending):
            if isinstance(event, UpdateAccepted):
                self._remember_receipt(event.envelope_sha256, first + offset, leaf_hash(encode_event(event)))
        self._pending.clear()
        return True

    def _remember_receipt(self, envelope_sha256: str, index: int, leaf: bytes) -> None:
        if len(self._receipts) >= _MAX_RECEIPTS:  # the oldest go first (dicts keep insertion order)
            del self._receipts[next(iter(self._receipts))]
        self._receipts[envelope_sha256] = (index, leaf)

    def receipt(self, envelope_sha256: str) -> tuple[int, bytes, bytes] | None:
        """``(leaf index, leaf hash, entry bytes)`` of the ``update_accepted`` entry of that update, if written."""
        with self.lock:
            found = self._receipts.get(envelope_sha256)
            if found is None:
                return None
            try:
                entry = self.log.entry(found[0])
            except Exception:  # noqa: BLE001 - the receipt then names no entry; the upload stays accepted
                log.exception("ledger entry %d unreadable for a receipt", found[0])
                return None
            return found[0], found[1], entry

    def checkpoint(self) -> bytes | None:
        """Flush and issue a signed checkpoint for the current size (``None`` if that failed)."""
        with self.lock:
            if not self._flush():
                return None
            try:
                if self.store.size() != self.log.size():
                    self.log.refresh()  # another worker appended: sign the log as it is, not this view of it
                note = self.log.checkpoint()
            except Exception:  # noqa: BLE001 - retried at the next tick
                log.exception("ledger checkpoint failed")
                return None
            self._checkpointed_size = self.log.size()
            self._last_checkpoint_at = self.clock()
            return note

    def tick(self, *, checkpoint: bool = True) -> None:
        """Issue a checkpoint when the log grew and ``checkpoint_interval`` passed (the server's ticker);
        with ``checkpoint=False`` only append what is pending."""
        with self.lock:
            self._flush()
            if not checkpoint:
                return
            if self.store.size() != self.log.size():
                self.log.refresh()  # other workers appended
            due = self.clock() - self._last_checkpoint_at >= self.checkpoint_interval
            grew = self.log.size() != self._checkpointed_size
        if due and grew:
            self.checkpoint()

    # -- witnesses -------------------------------------------------------------------------------
    def add_cosignatures(self, witness_vkey: str, lines: bytes) -> int:
        """Keep the cosignatures by ``witness_vkey`` in ``lines`` that verify over the latest checkpoint.

        The server does not decide which witnesses to trust (devices do, with their
        :class:`~qflare.ledger.WitnessPolicy`); it only refuses lines that do not verify, and keeps at
        most ``_MAX_WITNESSES`` keys per checkpoint. Returns how many lines were kept.

        Raises
        ------
        qflare.errors.MalformedPayload
            ``invalid_verifier_key`` / ``not_a_witness_key`` / ``malformed_note``.
        qflare.errors.NotFound
            ``no_checkpoint``.
        LedgerIntegrityError
            ``invalid_signature`` (not over the latest checkpoint), ``no_cosignature``.
        """
        verifier = parse_verifier_key(witness_vkey)
        if not isinstance(verifier, CosignatureVerifier):
            raise MalformedPayload("not a cosignature/v1 verifier key", reason="not_a_witness_key")
        sigs = parse_add_checkpoint_response(lines)
        with self.lock:
            note = self.log.latest_checkpoint()
            if note is None:
                raise NotFound("no checkpoint has been issued yet", reason="no_checkpoint")
            body, _ = parse_note(note)
            mine = [g for g in sigs if (g.name, g.key_id) == (verifier.name, verifier.key_id)]
            if not mine:
                raise LedgerIntegrityError("no cosignature by that key", reason="no_cosignature")
            for g in mine:
                verifier.verify_cosignature(body, g.signature)  # LedgerIntegrityError(invalid_signature)
            kept = self._cosignatures.setdefault(body, {})
            if len(kept) >= _MAX_WITNESSES and (verifier.name, verifier.key_id) not in kept:
                raise Conflict("too many witnesses for this checkpoint", reason="too_many_witnesses")
            kept[(verifier.name, verifier.key_id)] = mine[-1]
            for old in [b for b in self._cosignatures if b != body]:
                del self._cosignatures[old]  # only the latest checkpoint is served with cosignatures
            return len(mine)

    def cosigned_checkpoint(self) -> bytes | None:
        """The latest checkpoint note with the witnesses' cosignature lines appended (``/ledger/checkpoint``)."""
        with self.lock:
            note = self.log.latest_checkpoint()
            if note is None:
                return None
            body, _ = parse_note(note)
            extra = self._cosignatures.get(body, {})
            return note + b"".join(g.line() for g in extra.values())

    # -- the facts -------------------------------------------------------------------------------
    def device_enrolled(self, device_id: str, public_key: bytes) -> None:
        self.record(DeviceEnrolled(device_id, hashlib.sha256(public_key).hexdigest(), _ms(self.clock())))

    def device_revoked(self, device_id: str, reason: str = "operator") -> None:
        self.record(DeviceRevoked(device_id, reason, _ms(self.clock())))

    def round_opened(self, round_id: int, model_sha256: str, rule: str, deadline_at: float) -> None:
        self.record(RoundOpened(round_id, model_sha256, rule, _ms(deadline_at), _ms(self.clock())))

    def _produced(self, made: Produced, entry: bytes | None) -> LedgerEvent:
        """The entry to append for a fact the backend may have produced itself.

        ``entry`` (the enclave's signed bytes) is appended as it is: it is the enclave's statement, and
        the host's own view (``made``) is only compared with it (a disagreement is logged at ERROR, as is
        a signature that does not verify under the log key: ``qflare ledger verify`` then names the entry).
        Without ``entry`` the host's ``made`` is signed by the log signer when it holds the key (no enclave),
        else appended unsigned (logged; ``verify`` reports ``unsigned_entry``).
        """
        if entry is not None:
            try:
                event = decode_event(entry)
            except MalformedPayload as exc:
                log.error("the backend's %s entry does not decode (%s); writing the host's view", made.EVENT,
                          exc.reason)
            else:
                if type(event) is not type(made) or any(
                    getattr(event, f) != getattr(made, f) for f in _AGREE[type(made)]
                ):
                    log.error("the backend's %s entry disagrees with the host's view: %s", made.EVENT,
                              {f: (getattr(event, f, None), getattr(made, f)) for f in _AGREE[type(made)]})
                try:
                    verify_entry(event, self.signer.public_key)
                except LedgerIntegrityError as exc:
                    log.error("the backend's %s entry: %s", made.EVENT, exc.message)
                return event
        signed = self.signer.sign_entry(made)
        if signed is None:
            log.error("no producer signature for the %s entry of round %d: appended unsigned", made.EVENT,
                      made.round_id)
            return made
        return signed

    def update_entry(
        self, device_id: str, round_id: int, sha256: str, num_examples: int, norm: float | None,
        *, entry: bytes | None = None,
    ) -> bytes:
        """The ``update_accepted`` entry bytes to commit with the update (``entry``: the backend's signed
        bytes, behind an enclave, taken as they are; else made here and signed by the log key)."""
        # The rule's verdict: "accepted" with the norm the backend computed; a backend that computes no
        # norm (no bound, in process) makes the entry say so (norm 0).
        verdict = "accepted" if norm is not None else "accepted_norm_unchecked"
        made = UpdateAccepted(device_id, round_id, sha256, num_examples, float(norm or 0.0), verdict,
                              _ms(self.clock()))
        return encode_event(self._produced(made, entry))

    def update_accepted(
        self, device_id: str, round_id: int, sha256: str, num_examples: int, norm: float | None,
        *, entry: bytes | None = None,
    ) -> None:
        """Append an ``update_accepted`` entry now (:meth:`update_entry`; the server commits it through the
        outbox instead, :meth:`drain`)."""
        self.record(decode_event(self.update_entry(device_id, round_id, sha256, num_examples, norm, entry=entry)))

    def update_refused(self, reason: str, device_id: str | None, round_id: int | None) -> None:
        self.record(UpdateRefused(reason, device_id, round_id, _ms(self.clock())))

    def round_closed_entries(
        self, round_id: int, model_sha256: str, rule: str, participants: Sequence[tuple[str, int]],
        *, entry: bytes | None = None,
    ) -> list[bytes]:
        """``round_closed`` and ``aggregate_published`` (weights = sample counts) to commit with the close.
        ``entry``: the backend's signed ``aggregate_published`` bytes (behind an enclave)."""
        now = _ms(self.clock())
        weights = tuple((d, float(n)) for d, n in participants)
        made = AggregatePublished(round_id, model_sha256, rule, {"weighting": "num_examples"}, weights, now)
        return [encode_event(RoundClosed(round_id, len(participants), now)), encode_event(self._produced(made, entry))]

    def round_closed(
        self, round_id: int, model_sha256: str, rule: str, participants: Sequence[tuple[str, int]],
        *, entry: bytes | None = None,
    ) -> None:
        """Append :meth:`round_closed_entries` now, then a checkpoint."""
        entries = self.round_closed_entries(round_id, model_sha256, rule, participants, entry=entry)
        self.record(*(decode_event(e) for e in entries))
        self.checkpoint()

    def key_source_refused(self, key_source: str, reason: str, device_id: str | None) -> None:
        self.record(KeySourceRefused(key_source, reason, device_id, _ms(self.clock())))

    def qkd_link_aborted(self, link_id: str, reason: str, qber: float | None = None) -> None:
        self.record(QkdLinkAborted(link_id, reason, qber, _ms(self.clock())))

    def enclave_quote_published(self, measurement: bytes, quote: bytes, public_keys: bytes) -> None:
        """Log the enclave's quote once per identity (measurement + public keys): at start, and again
        when a restarted enclave comes back with other keys."""
        ident = (bytes(measurement), hashlib.sha256(public_keys).hexdigest())
        with self.lock:
            if self._enclave == ident:
                return
            self._enclave = ident
        self.record(EnclaveQuotePublished(measurement.hex(), hashlib.sha256(quote).hexdigest(), ident[1],
                                          _ms(self.clock())))

    def round_failed_entries(self, round_id: int, reason: str) -> list[bytes]:
        """The ``round_failed`` entry to commit with the failed close."""
        return [encode_event(RoundFailed(round_id, reason, _ms(self.clock())))]

    def round_failed(self, round_id: int, reason: str) -> None:
        self.record(RoundFailed(round_id, reason, _ms(self.clock())))
        self.checkpoint()

    # -- the outbox: entries committed with their fact ----------------------------------------------
    def drain(self, outbox: Outbox) -> int:
        """Append the entries the database committed with their facts (``ledger_outbox``), in order, and
        delete them; return how many were appended.

        An entry the log already holds (its leaf hash is there: appended before a crash that left its
        outbox row) is skipped, so each is logged exactly once. If the append fails (e.g. the database
        briefly locked) the rows stay for the next drain and the failure is logged; it never raises.
        """
        with self.lock:
            if not self._flush():
                return 0
            try:
                with outbox.claim_ledger_entries() as entries:
                    new = [e for e in entries if self.store.find_leaf(leaf_hash(e)) is None]
                    self._pending.extend(decode_event(e) for e in new)
                    if not self._flush():
                        raise _DrainFailed  # roll the claim back: the rows stay
            except _DrainFailed:
                self._pending.clear()  # they are still in the outbox; the next drain appends them
                return 0
            except Exception:  # noqa: BLE001 - the audit log must not fail the server's work
                log.exception("ledger outbox drain failed; its entries stay for the next attempt")
                return 0
            return len(new)
