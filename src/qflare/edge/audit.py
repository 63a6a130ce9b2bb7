"""The device as an auditor of the server's transparency log (``docs/ledger.md``, "Devices as auditors").

On each contact the device fetches the latest checkpoint, verifies it under the log key it pins (both
halves of the hybrid signature) and, when configured, a k-of-n witness policy; then it checks that the
new checkpoint extends the last one it verified (a consistency proof), and that each of its own
accepted updates whose upload receipt named a leaf is included (an inclusion proof); the receipt's
entry itself must name this update and carry the log key's producer signature. A checkpoint
older than the last verified one (rollback), another root at the same size or a failing proof (fork),
or a receipt's entry missing from the log raises :class:`~qflare.errors.LedgerIntegrityError`; the
node logs the reason and stops.

When (:meth:`LedgerAuditor.due`): the device audits when it matters, not on every contact: at its first
contact (nothing verified yet), after each accepted upload until the checkpoint that covers it has
been verified (inclusion of its entry, consistency of that checkpoint with the last one verified),
before it stops (``done``), and when ``audit_interval_seconds`` passed since its last check. A contact
in between costs no request: the tree it verified last is the one it relies on, and a log that forks
or is rewritten meanwhile is caught at the next check, since every check proves the new checkpoint
extends the last verified one.

The last verified checkpoint and the receipts still to check are kept in memory and, when a state
file is given, persisted there (written to a temporary file and renamed over the old one).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from qflare.config import DeviceConfig
from qflare.crypto import VerifyKey
from qflare.crypto.keyfile import read_public_key
from qflare.errors import ConfigError, LedgerIntegrityError, MalformedPayload, NotFound, QFlareError
from qflare.ledger import HybridLogKey, WitnessPolicy
from qflare.ledger.checkpoint import Checkpoint, parse_checkpoint
from qflare.ledger.cosignature import CosignatureVerifier, WitnessQuorumError
from qflare.ledger.entries import UpdateAccepted, decode_event, verify_entry
from qflare.ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from qflare.ledger.note import parse_note, parse_verifier_key

__all__ = ["AuditBundle", "HttpLedgerReader", "LedgerAuditor", "LedgerReader", "build_auditor",
           "parse_audit_bundle"]

log = logging.getLogger("qflare.edge")

_STATE_VERSION = 1


class LedgerReader(Protocol):
    """What the auditor reads from the log's public API."""

    def checkpoint(self) -> bytes | None:
        """The latest (cosigned) checkpoint note, ``None`` if none was issued yet."""
        ...

    def consistency(self, first: int, second: int) -> list[bytes]: ...

    def inclusion(self, leaf_hash: bytes, tree_size: int) -> tuple[int, list[bytes]]: ...


@dataclass
class AuditBundle:
    """One answer of ``/v1/ledger/audit``: the latest checkpoint note and the proofs a check needs.

    A :class:`LedgerReader` for the one check it was fetched for: :meth:`consistency` and
    :meth:`inclusion` answer from it and never ask the server; a proof it does not hold (the server
    answered about another tree, or left a proof out) is refused, not fetched elsewhere.
    """

    note: bytes | None
    tree_size: int = 0
    first: int | None = None  # the consistency proof's first size, None: none given
    consistency_proof: list[bytes] = field(default_factory=list)
    inclusion_proofs: dict[bytes, tuple[int, list[bytes]]] = field(default_factory=dict)

    def checkpoint(self) -> bytes | None:
        return self.note

    def consistency(self, first: int, second: int) -> list[bytes]:
        if self.first != first or self.tree_size != second:
            raise _refuse(f"the log's audit answer holds no consistency proof from {first} to {second} "
                          f"(it gave {self.first} to {self.tree_size})", "inconsistent_checkpoint")
        return self.consistency_proof

    def inclusion(self, leaf_hash: bytes, tree_size: int) -> tuple[int, list[bytes]]:
        got = self.inclusion_proofs.get(leaf_hash)
        if got is None or self.tree_size != tree_size:
            raise NotFound(f"the log's audit answer proves no leaf {leaf_hash.hex()[:16]}… in the tree of size "
                           f"{tree_size}", reason="leaf_not_in_tree")
        return got


def _hexes(value: Any) -> list[bytes]:
    if not isinstance(value, list):
        raise ValueError("a proof must be a list")
    return [bytes.fromhex(str(h)) for h in value]


def parse_audit_bundle(body: Any) -> AuditBundle:
    """An :class:`AuditBundle` from ``/v1/ledger/audit``'s JSON; ``audit_answer_malformed`` if it is not one.

    Only the shape is checked here: the note's signatures and every proof are verified by the auditor.
    """
    try:
        bundle = AuditBundle(note=str(body["checkpoint"]).encode("utf-8"), tree_size=int(body["tree_size"]))
        c = body.get("consistency")
        if c is not None:
            if int(c["second"]) != bundle.tree_size:
                raise ValueError("the consistency proof is not to the checkpoint's size")
            bundle.first, bundle.consistency_proof = int(c["first"]), _hexes(c["proof"])
        for item in body.get("inclusion") or []:
            if item.get("leaf_index") is not None:
                bundle.inclusion_proofs[bytes.fromhex(str(item["leaf_hash"]))] = (
                    int(item["leaf_index"]), _hexes(item["proof"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _refuse(f"the log's audit answer is malformed ({exc})", "audit_answer_malformed") from None
    return bundle


class HttpLedgerReader:
    """:class:`LedgerReader` over the server's read API (``/ledger/checkpoint``, ``/v1/ledger/proof/*``),
    and :meth:`audit` over ``/v1/ledger/audit`` (all of one check in one request)."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http
        self._bundles = True  # False once the server answered that it has no /v1/ledger/audit

    def _get(self, path: str, params: Any = None) -> httpx.Response:
        from qflare.edge.client import ServerUnavailable, error_from_response

        try:
            resp = self._http.get(path, params=params)
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"cannot reach the ledger: {exc.__class__.__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise error_from_response(resp)
        return resp

    def checkpoint(self) -> bytes | None:
        try:
            return self._get("/ledger/checkpoint").content
        except NotFound as exc:
            if exc.reason == "no_checkpoint":
                return None
            raise

    def consistency(self, first: int, second: int) -> list[bytes]:
        body = self._get("/v1/ledger/proof/consistency", {"first": first, "second": second}).json()
        return [bytes.fromhex(h) for h in body["proof"]]

    def inclusion(self, leaf_hash: bytes, tree_size: int) -> tuple[int, list[bytes]]:
        body = self._get("/v1/ledger/proof/inclusion", {"leaf_hash": leaf_hash.hex(), "tree_size": tree_size}).json()
        return int(body["leaf_index"]), [bytes.fromhex(h) for h in body["proof"]]

    def audit(self, first: int, leaves: Sequence[bytes]) -> AuditBundle | None:
        """The latest checkpoint with the consistency proof from ``first`` and the inclusion proofs of
        ``leaves``, in one request; ``None`` when the server has no such route (then use the three)."""
        if not self._bundles:
            return None
        params: list[tuple[str, str | int]] = [("first", first)] + [("leaf_hash", h.hex()) for h in leaves]
        try:
            resp = self._get("/v1/ledger/audit", params)
        except NotFound as exc:
            if exc.reason == "no_checkpoint":
                return AuditBundle(note=None)
            if exc.reason == "no_ledger":
                raise
            self._bundles = False  # an older server: no /v1/ledger/audit
            return None
        try:
            body = resp.json()
        except ValueError:
            raise _refuse("the log's audit answer is not JSON", "audit_answer_malformed") from None
        return parse_audit_bundle(body)


@dataclass
class _State:
    note: bytes | None = None  # the last verified checkpoint note (signature lines included)
    pending: list[tuple[int, bytes]] = field(default_factory=list)  # receipts not yet covered by a checkpoint
    verified_updates: int = 0


def _refuse(message: str, reason: str) -> LedgerIntegrityError:
    return LedgerIntegrityError(message, reason=reason)


class LedgerAuditor:
    """Keeps the last verified checkpoint and refuses a log that forked or rolled back.

    Parameters
    ----------
    reader:
        The log's read API.
    origin:
        The log origin the checkpoints must carry.
    log_key:
        The pinned hybrid log key (both the Ed25519 and the ML-DSA-65 line must verify).
    witnesses:
        An optional k-of-n witness policy every checkpoint must meet.
    state_file:
        Where the state survives a restart (``None``: memory only).
    audit_interval_seconds:
        The longest a device goes between checks while nothing is due (:meth:`due`); 0: check on every contact.
    witness_wait_seconds:
        How long :meth:`check` waits for the log's newest checkpoint to get the witness quorum: a witness
        cosigns when it polls, so a checkpoint is uncosigned for a while after the log issues it. ``check``
        asks again every ``WITNESS_POLL_SECONDS`` meanwhile (in the audit thread, while the device trains)
        and never accepts a checkpoint without the quorum; past this it refuses with
        ``witness_quorum_not_met``. 0: refuse at once.
    clock, sleep:
        Monotonic seconds and a sleep (parameters, for tests).
    """

    WITNESS_POLL_SECONDS = 0.5

    def __init__(
        self,
        reader: LedgerReader,
        *,
        origin: str,
        log_key: HybridLogKey,
        witnesses: WitnessPolicy | None = None,
        state_file: Path | None = None,
        witness_wait_seconds: float = 0.0,
        audit_interval_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.reader = reader
        self.witness_wait_seconds = witness_wait_seconds
        self.audit_interval_seconds = audit_interval_seconds
        self._checked_at: float | None = None  # when check() last passed (monotonic)
        self._clock, self._sleep = clock, sleep
        self._cosigned_by: list[str] = []
        self.origin = origin
        self.log_key = log_key
        self.witnesses = witnesses
        self.state_file = state_file
        self._entry_key = log_key.verify_key()
        self._state = self._load()
        self._verified: Checkpoint | None = None
        if self._state.note is not None:
            # Our own file: re-verify it anyway, so a corrupted state file is noticed, not trusted.
            self._verified = self._open(self._state.note)

    # -- state -------------------------------------------------------------------------------------
    def _load(self) -> _State:
        if self.state_file is None or not self.state_file.exists():
            return _State()
        try:
            raw = json.loads(self.state_file.read_text())
            if raw.get("version") != _STATE_VERSION or raw.get("origin") != self.origin:
                raise ValueError("version or origin")
            note = raw["checkpoint"]
            return _State(
                note=None if note is None else note.encode("utf-8"),
                pending=[(int(i), bytes.fromhex(h)) for i, h in raw["pending"]],
                verified_updates=int(raw.get("verified_updates", 0)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"ledger state file {self.state_file} is unreadable ({exc})",
                              reason="ledger_state") from None

    def _save(self) -> None:
        if self.state_file is None:
            return
        s = self._state
        doc = {
            "version": _STATE_VERSION, "origin": self.origin,
            "checkpoint": None if s.note is None else s.note.decode("utf-8"),
            "pending": [[i, h.hex()] for i, h in s.pending], "verified_updates": s.verified_updates,
        }
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.state_file)  # atomic: the old state or the new, never half of one

    @property
    def verified(self) -> Checkpoint | None:
        """The last checkpoint this device verified."""
        return self._verified

    @property
    def pending(self) -> list[tuple[int, bytes]]:
        """Receipts (leaf index, leaf hash) waiting for a checkpoint that covers them."""
        return list(self._state.pending)

    @property
    def verified_updates(self) -> int:
        """How many of this device's accepted updates were proven included."""
        return self._state.verified_updates

    # -- checks ------------------------------------------------------------------------------------
    def due(self, *, pending: bool = True) -> bool:
        """Whether a contact should :meth:`check`: nothing verified yet, an accepted update not yet proven
        included, or ``audit_interval_seconds`` passed since the last check (see the module docstring).

        ``pending=False``: not for the pending receipts alone (the device knows the round they were accepted
        in is still open, so no checkpoint covers them yet: the round-close checkpoint will)."""
        if self._verified is None or (pending and self._state.pending) or self._checked_at is None:
            return True
        return self._clock() - self._checked_at >= self.audit_interval_seconds

    def _open(self, note: bytes) -> Checkpoint:
        opened = self.log_key.open(note)  # LedgerIntegrityError: invalid_signature, missing_signature_half, ...
        cp = parse_checkpoint(opened.text, origin=self.origin)
        if self.witnesses is not None:
            report = self.witnesses.check(note, self.log_key.verifiers())  # WitnessQuorumError
            self._cosigned_by = [c.name for c in report.cosignatures]
        return cp

    def expect(self, receipt: dict[str, Any], *, device_id: str | None = None,
               update_sha256: str | None = None) -> None:
        """Check an upload receipt's ledger entry and remember its leaf, to be proven included after the
        next checkpoint.

        The entry (``ledger_entry``) must hash to the named leaf, be an ``update_accepted`` entry for this
        device (``device_id``), round, update (``update_sha256``) and sample count, and carry a producer
        signature under the pinned log key: with an enclave, the enclave's own statement that it accepted
        this update, which the host cannot write.

        Raises
        ------
        LedgerIntegrityError
            ``receipt_entry_malformed``, ``receipt_entry_mismatch``, ``unsigned_entry`` or
            ``invalid_entry_signature``. Final: stop.
        """
        index, leaf = receipt.get("ledger_index"), receipt.get("ledger_leaf_hash")
        if index is None or leaf is None:
            log.warning("the upload receipt names no ledger entry: its inclusion cannot be checked")
            return
        try:
            leaf_bytes = bytes.fromhex(str(leaf))
        except ValueError:
            raise _refuse("the upload receipt's leaf hash is not hex", "receipt_entry_malformed") from None
        self._check_entry(receipt, leaf_bytes, device_id, update_sha256)
        self._state.pending.append((int(index), leaf_bytes))
        self._save()

    def _check_entry(self, receipt: dict[str, Any], leaf: bytes, device_id: str | None,
                     update_sha256: str | None) -> None:
        raw = receipt.get("ledger_entry")
        if raw is None:
            log.warning("the upload receipt carries no ledger entry: its producer signature cannot be checked")
            return
        try:
            entry = base64.b64decode(str(raw), validate=True)
            event = decode_event(entry)
        except (binascii.Error, ValueError, MalformedPayload) as exc:
            raise _refuse(f"the upload receipt's ledger entry does not decode ({exc})",
                          "receipt_entry_malformed") from None
        if leaf_hash(entry) != leaf:
            raise _refuse("the upload receipt's ledger entry does not hash to its leaf", "receipt_entry_mismatch")
        want = {"device_id": device_id if device_id is not None else receipt.get("device_id"),
                "round_id": receipt.get("round_id"), "sample_count": receipt.get("num_examples"),
                "envelope_sha256": update_sha256 if update_sha256 is not None else receipt.get("sha256")}
        got = {k: getattr(event, k, None) for k in want}
        if not isinstance(event, UpdateAccepted) or got != want:
            raise _refuse(f"the upload receipt's ledger entry is not this update's acceptance ({event.EVENT}: "
                          f"{got} for {want})", "receipt_entry_mismatch")
        verify_entry(event, self._entry_key)  # LedgerIntegrityError: unsigned_entry / invalid_entry_signature

    def check(self) -> Checkpoint | None:
        """Fetch and verify the latest checkpoint against the last verified one; check pending receipts.

        Returns the (new) verified checkpoint, or ``None`` while the log has issued none.

        Raises
        ------
        LedgerIntegrityError
            ``checkpoint_rollback``, ``checkpoint_fork``, ``checkpoint_missing``, ``inconsistent_checkpoint``,
            ``update_not_logged``, ``witness_quorum_not_met`` or a signature reason. Final: stop.
        """
        deadline: float | None = None
        while True:
            try:
                cp = self._check_note(*self._fetch())
                self._checked_at = self._clock()
                return cp
            except WitnessQuorumError as exc:  # signed by the log key (checked first), not cosigned yet
                now = self._clock()
                if deadline is None:
                    deadline = now + self.witness_wait_seconds
                    log.debug("ledger: the log's checkpoint has %s; waiting up to %.0f s", exc.message,
                              self.witness_wait_seconds)
                if now >= deadline:
                    raise
                self._sleep(self.WITNESS_POLL_SECONDS)

    def _fetch(self) -> tuple[bytes | None, LedgerReader]:
        """The latest checkpoint note and the reader to prove things with: with a reader that has
        ``audit`` (``/v1/ledger/audit``), one request answers the note and the proofs this check needs,
        else the note alone (the proofs are asked one by one)."""
        bundle = getattr(self.reader, "audit", None)
        if bundle is not None:
            first = self._verified.size if self._verified is not None else 0
            got = bundle(first, [leaf for _, leaf in self._state.pending])
            if got is not None:
                return got.note, got
        return self.reader.checkpoint(), self.reader

    def _check_note(self, note: bytes | None, reader: LedgerReader | None = None) -> Checkpoint | None:
        reader = self.reader if reader is None else reader
        old = self._verified
        if note is None:
            if old is not None:
                raise _refuse(f"the log shows no checkpoint, but this device verified size {old.size}: "
                              "it was rolled back", "checkpoint_missing")
            return None
        due = old is not None and any(i < old.size for i, _ in self._state.pending)
        if self._state.note is not None and parse_note(note)[0] == parse_note(self._state.note)[0] and not due:
            if self.witnesses is not None:  # e.g. a restarted server dropped the cosignatures: wait for them
                self.witnesses.check(note, self.log_key.verifiers())
            return old  # same checkpoint as last time: nothing to prove
        cp = self._open(note)
        if old is not None:
            self._check_extends(old, cp, reader)
        self._check_receipts(cp, reader)
        self._verified, self._state.note = cp, note
        self._save()
        if self.witnesses is not None:
            log.info("ledger: verified checkpoint %d cosigned by %s", cp.size, ", ".join(self._cosigned_by))
        return cp

    def _check_extends(self, old: Checkpoint, cp: Checkpoint, reader: LedgerReader) -> None:
        if cp.size < old.size:
            raise _refuse(f"the log was rolled back: checkpoint size {cp.size} is below the size {old.size} "
                          "this device verified", "checkpoint_rollback")
        if cp.size == old.size:
            if cp.root != old.root:
                raise _refuse(f"the log forked: two checkpoints of size {cp.size} with different roots "
                              f"({old.root.hex()[:16]}… verified, {cp.root.hex()[:16]}… now)", "checkpoint_fork")
            return
        if old.size == 0:
            return  # the empty tree is a prefix of every tree
        proof = reader.consistency(old.size, cp.size)
        try:
            verify_consistency(old.size, cp.size, proof, old.root, cp.root)
        except LedgerIntegrityError as exc:
            raise _refuse(f"the log forked: checkpoint {cp.size} does not extend the verified checkpoint "
                          f"{old.size} ({exc.reason})", "inconsistent_checkpoint") from None

    def _check_receipts(self, cp: Checkpoint, reader: LedgerReader) -> None:
        still: list[tuple[int, bytes]] = []
        for index, leaf in self._state.pending:
            if index >= cp.size:
                still.append((index, leaf))
                continue
            try:
                got, proof = reader.inclusion(leaf, cp.size)
                if got != index:
                    raise _refuse(f"leaf found at {got}", "index_mismatch")
                verify_inclusion(leaf, index, cp.size, proof, cp.root)
            except (LedgerIntegrityError, NotFound) as exc:
                raise _refuse(f"this device's accepted update (entry {index}) is not in the log's checkpoint "
                              f"of size {cp.size} ({exc.reason})", "update_not_logged") from None
            self._state.verified_updates += 1
            log.info("ledger: accepted update at entry %d proven included in checkpoint %d", index, cp.size)
        self._state.pending = still


def _log_key(cfg: DeviceConfig, base: Path) -> HybridLogKey:
    lc = cfg.ledger
    assert lc is not None
    try:
        if lc.vkeys is not None:
            key = HybridLogKey.from_verifier_keys(lc.vkeys[0], lc.vkeys[1])
        else:
            assert lc.log_key_file is not None
            vk = read_public_key(cfg.resolve(lc.log_key_file, base))
            if not isinstance(vk, VerifyKey):
                raise ConfigError("ledger.log_key_file is not a signing public key", reason="ledger_key")
            key = HybridLogKey.from_verify_key(lc.origin, vk)
    except OSError as exc:
        raise ConfigError(f"ledger.log_key_file: cannot read it ({exc.strerror})", reason="ledger_key") from None
    except QFlareError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"ledger: bad log key ({exc.message})", reason="ledger_key") from None
    if key.name != lc.origin:
        raise ConfigError(f"ledger: the log key is named {key.name}, not the origin {lc.origin}", reason="ledger_key")
    return key


def _witness_policy(keys: Sequence[str], k: int) -> WitnessPolicy | None:
    if k == 0:
        return None
    verifiers = []
    for vkey in keys:
        v = parse_verifier_key(vkey)
        if not isinstance(v, CosignatureVerifier):
            raise ConfigError(f"ledger.witness_keys: {vkey[:40]}… is not a cosignature key", reason="ledger_key")
        verifiers.append(v)
    return WitnessPolicy(verifiers, k)


def build_auditor(cfg: DeviceConfig, base: Path, http: httpx.Client) -> LedgerAuditor | None:
    """The device's auditor from its ``ledger:`` section (``None`` without one)."""
    lc = cfg.ledger
    if lc is None:
        return None
    state = cfg.resolve(lc.state_file, base) if lc.state_file else \
        cfg.resolve(cfg.identity_key_file, base).with_suffix(".ledger.json")
    return LedgerAuditor(HttpLedgerReader(http), origin=lc.origin, log_key=_log_key(cfg, base),
                         witnesses=_witness_policy(lc.witness_keys, lc.require_witnesses), state_file=state,
                         witness_wait_seconds=lc.witness_wait_seconds,
                         audit_interval_seconds=lc.audit_interval_seconds)
