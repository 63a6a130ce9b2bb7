"""Round orchestration: selection, deadlines, stragglers, quorum, aggregation, resume after restart.

State lives in the :class:`~qflare.server.storage.Repository`; the in-memory part (the running
aggregate) is rebuilt from stored updates on start-up, so a restart mid-round loses no accepted update.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from qflare.config import GlobalConfig
from qflare.errors import (
    AggregationError,
    Conflict,
    DuplicateUpdate,
    EnclaveError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    QFlareError,
    RoundClosed,
    UpdateRejected,
)
from qflare.fl.port import AggregationBackend, UpdateInput, ValidatedUpdate
from qflare.fl.serialize import ModelSpec, dump_arrays, load_arrays, sha256_hex
from qflare.fl.tasks import get_task
from qflare.fl.train import get_arrays
from qflare.server.evaluation import Evaluator
from qflare.server.faults import crash_point
from qflare.server.lease import RoundLease, SoleLease
from qflare.server.reputation import Reputation
from qflare.server.storage import DeviceRecord, NewEvent, Repository, RoundRecord, UpdateRecord
from qflare.server.wakeup import Wakeup

if TYPE_CHECKING:
    from qflare.fl.privacy import PrivacyAccountant
    from qflare.server.ledger import AuditLog

log = logging.getLogger("qflare.rounds")

Clock = Callable[[], float]


@dataclass(frozen=True)
class Assignment:
    """What a device is told to do next (the answer of ``POST /v1/device/task``).

    "Task" alone means a learning problem (:mod:`qflare.fl.tasks`); what a device is asked to do is an
    assignment: train on a round, wait, or stop.
    """

    status: Literal["train", "wait", "done"]
    retry_after: float = 1.0
    round_id: int | None = None
    model_version: int | None = None
    model_sha256: str | None = None
    deadline_at: float | None = None
    train_config: dict[str, Any] | None = None
    task_signature: str | None = None  # base64, by the enclave: binds round, model hash and deadline
    model_signature: str | None = None  # base64, by the enclave, over the base model (versions >= 1)
    model_round_id: int | None = None  # the round that produced the base model (what its signature names)
    reason: str | None = None  # with "wait": what the device waits for, in words (logged by the edge node)
    # rounds.mode async (FedBuff): the device names the version it trained on in its upload (?base_version=),
    # and rebases a stale update onto the open buffer's model, its step weighted (1 + staleness) ** -a.
    mode: Literal["sync", "async"] = "sync"
    staleness_exponent: float | None = None
    max_staleness: int | None = None


def _parse_version(raw: int | str | None) -> int | None:
    """A model version from a request's ``?base_version=`` (decimal digits), else ``bad_base_version``."""
    if raw is None or isinstance(raw, int):
        return raw
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12):
        raise InvalidInput("base_version must be a model version (a non-negative integer)", reason="bad_base_version")
    return int(raw)


def initial_model_blob(task_name: str, seed: int) -> bytes:
    """The version-0 global model: the task's model initialised from ``seed``."""
    import torch

    torch.manual_seed(seed)
    model = get_task(task_name).build_model()
    return dump_arrays(get_arrays(model), {"round_id": "0"})


class Orchestrator:
    """Runs training rounds over the registered devices.

    Parameters
    ----------
    repo:
        Persistent state.
    config:
        The server's global configuration.
    backend:
        Validates and aggregates updates (in-process or behind the enclave boundary).
    clock:
        Returns the current time in seconds; a parameter so that tests control deadlines.
    lease:
        Round ownership (:mod:`qflare.server.lease`). Every process accepts updates into the database;
        only the lease holder opens and closes rounds, replaying the updates other processes accepted
        before it decides (default: always the owner).
    """

    def __init__(
        self,
        repo: Repository,
        config: GlobalConfig,
        backend: AggregationBackend,
        *,
        clock: Clock = time.time,
        evaluator: Evaluator | None = None,
        lease: RoundLease | None = None,
    ) -> None:
        self.lease: RoundLease = lease or SoleLease()
        self.repo = repo
        self.config = config
        self.backend = backend
        self.clock = clock
        self.evaluator = evaluator
        self.ledger: AuditLog | None = None  # set by build_state; docs/ledger.md
        self.privacy: PrivacyAccountant | None = None  # central DP spend, set by build_state; docs/privacy.md
        self.reputation = Reputation(repo, config.reputation, clock=clock, ledger=lambda: self.ledger)
        self._lock = threading.RLock()
        self._counts: dict[int, int] = {}
        # Per round begun in the backend: the devices whose updates it has counted (accepted here or
        # replayed from the database after another worker accepted them).
        self._seen: dict[int, set[str]] = {}
        self._owner = False
        self._task_signatures: dict[int, str | None] = {}
        # Per round: seconds the backend spent validating and adding updates (reported as update_seconds).
        self._update_seconds: dict[int, float] = {}
        # Per round: stored updates this process read back and replayed, and those a shared enclave already
        # counted (not read back), reported as replayed_updates and replay_skipped_updates.
        self._replays: dict[int, list[int]] = {}
        # Wakes the task route's long-polls when what devices are told may have changed (a round opened,
        # closed or failed here, or another worker's round seen at a tick).
        self.changed = Wakeup()
        self._announced: tuple[int, str] | None = None
        # Closed rounds whose updates' stored bytes are still to be dropped (a few per tick, _drop_blobs).
        self._blobs_to_drop: set[int] = set()
        # Who takes part in a round: None is uniform sampling; else e.g. selection.AdaptiveSelector().
        self.select: Callable[..., list[str]] | None = None
        # Async mode: each accepted update's staleness (versions behind the buffer's base), per open buffer.
        self._staleness: dict[int, dict[str, int]] = {}
        if config.rounds.selector == "adaptive":
            from qflare.server.selection import AdaptiveSelector

            self.select = AdaptiveSelector(max_wait_rounds=config.rounds.max_wait_rounds)
        task = get_task(config.task)
        self.metric: str = task.metric
        self.spec: ModelSpec = ModelSpec.from_model(task.build_model())

    # -- start-up --------------------------------------------------------------------------------
    def bootstrap(self) -> None:
        """Create model version 0 if needed and resume any round left open by a crash (the owner only).

        First, any worker appends the audit entries a crash left in the ledger outbox."""
        if self.ledger is not None:
            self.ledger.drain(self.repo)
        with self._lock:
            if not self.lease.held():
                self._owner = False
                return
            self._owner = True
            now = self.clock()
            if self.repo.latest_model() is None:
                blob = initial_model_blob(self.config.task, self.config.seed)
                self.repo.add_model(
                    0, blob=blob, sha256=sha256_hex(blob), spec_fingerprint=self.spec.fingerprint(),
                    round_id=None, now=now,
                )
                self.repo.add_event("model_created", now=now, detail="version 0 (initial)")
            if not self.config.server.keep_update_blobs:  # a drop that a crash or a stop interrupted
                self._blobs_to_drop.update(self.repo.rounds_holding_blobs(("aggregated",)))
            for rnd in self.repo.open_rounds():
                self._resume(rnd)

    def _resume(self, rnd: RoundRecord) -> None:
        self.backend.begin_round(rnd.round_id, self.repo.model_blob(rnd.base_version), self.spec)
        seen = self._replay_stored(rnd.round_id, self.repo.update_device_ids(rnd.round_id))
        self._seen[rnd.round_id] = seen
        count = len(seen)
        self._counts[rnd.round_id] = count
        self.repo.add_event("round_resumed", now=self.clock(), round_id=rnd.round_id, detail=f"{count} updates")
        log.info("resumed round %d with %d accepted updates", rnd.round_id, count)
        # A crash between a round's last accepted update and its close leaves a round that only the
        # deadline would close: close it now when the updates already stored suffice.
        why = self._full(rnd, count)
        if why is not None:
            self._aggregate(rnd, reason=why)
            self._maybe_open_round()

    @property
    def asynchronous(self) -> bool:
        return self.config.rounds.mode == "async"

    def _full(self, rnd: RoundRecord, count: int) -> str | None:
        """Why ``rnd`` closes now with ``count`` updates (``None``: it stays open).

        Sync: every selected device reported, or the quorum with ``close_on_quorum``. Async: the buffer
        holds ``rounds.buffer`` updates (FedBuff's K)."""
        rc = self.config.rounds
        if self.asynchronous:
            return "buffer_full" if count >= rc.buffer else None
        if count >= len(rnd.selected):
            return "all_reported"
        return "quorum" if rc.close_on_quorum and count >= rc.min_quorum else None

    # -- queries ---------------------------------------------------------------------------------
    def current_round(self) -> RoundRecord | None:
        rounds = self.repo.open_rounds()
        return rounds[0] if rounds else None

    @contextlib.contextmanager
    def consistent_view(self) -> Iterator[None]:
        """Hold off this process's round closes (which take the same lock) while a reader takes several reads
        that must describe one moment: the rounds, and the privacy budget a close spends."""
        with self._lock:
            yield

    def completed_rounds(self) -> int:
        return self.repo.count_rounds("aggregated")

    def finished(self, *, completed: int | None = None) -> bool:
        """Every round done (``completed``: the count the caller already read, for one consistent snapshot)."""
        # A DP budget that one more round would exceed ends the run: the model stays the last within budget.
        over_budget = self.privacy is not None and self.privacy.would_exceed(self.config.rounds.fraction)
        done = self.completed_rounds() if completed is None else completed
        return over_budget or done >= self.config.rounds.total

    def assignment_for(self, device_id: str) -> Assignment:
        # Under the lock: a round is handed out only once it is open for every reader (stored and
        # registered with the backend) and not while it is being closed.
        with self._lock:
            return self._assignment_for(device_id)

    def _assignment_for(self, device_id: str) -> Assignment:
        rc = self.config.rounds
        if self.finished():
            # The final model, for a device that personalises it (and reports its own metric) before it stops.
            final = self.repo.latest_model()
            if final is None:
                return Assignment(status="done", retry_after=0)
            return Assignment(status="done", retry_after=0, model_version=final.version, model_sha256=final.sha256,
                              model_signature=base64.b64encode(final.signature).decode() if final.signature else None,
                              model_round_id=final.round_id)
        rnd = self.current_round()
        # Async: any enrolled device may contribute once to the open buffer (FedBuff: devices train when
        # they can); selection applies to sync rounds.
        chosen = rnd is not None and (self.asynchronous or device_id in rnd.selected)
        reported = rnd is not None and chosen and self.repo.has_update(rnd.round_id, device_id)
        if rnd is None or not chosen or reported:
            # a device whose update is in is told which open round it waits for (it audits once that closed)
            return Assignment(status="wait", retry_after=min(2.0, rc.deadline_seconds / 10),
                              round_id=rnd.round_id if rnd is not None and reported else None,
                              reason=self._wait_reason(device_id, rnd))
        model = self.repo.get_model(rnd.base_version)
        if model is None:
            raise NotFound(f"model version {rnd.base_version} is missing", reason="unknown_model_version")
        return Assignment(
            status="train",
            retry_after=0,
            round_id=rnd.round_id,
            model_version=model.version,
            model_sha256=model.sha256,
            deadline_at=rnd.deadline_at,
            train_config=self.config.training.model_dump(),
            task_signature=self._task_signature(rnd, model.sha256),
            model_signature=base64.b64encode(model.signature).decode() if model.signature else None,
            model_round_id=model.round_id,
            mode=rc.mode,
            staleness_exponent=rc.staleness_exponent if self.asynchronous else None,
            max_staleness=rc.max_staleness if self.asynchronous else None,
        )

    def _wait_reason(self, device_id: str, rnd: RoundRecord | None) -> str:
        rc = self.config.rounds
        if rnd is None:
            active = self.repo.count_active_devices(since=self.clock() - rc.active_window_seconds)
            needed = self._devices_needed()
            if active < needed:
                return (f"waiting for {needed} active devices before round {self.repo.last_round_id() + 1}"
                        f" opens ({active} of {needed} active)")
            return "waiting for the next round to open"
        if device_id not in rnd.selected and not self.asynchronous:
            return f"not selected for round {rnd.round_id}; waiting for the next round"
        if self.asynchronous:
            return f"update for buffer {rnd.round_id} received; waiting for the next model version"
        return f"update for round {rnd.round_id} received; waiting for the round to close"

    def _task_signature(self, rnd: RoundRecord, model_sha256: str) -> str | None:
        # One signature per round serves every device: the task is the same for all of them.
        if rnd.round_id not in self._task_signatures:
            sig = self.backend.sign_round_task(rnd.round_id, model_sha256, rnd.deadline_at)
            self._task_signatures[rnd.round_id] = base64.b64encode(sig).decode() if sig else None
        return self._task_signatures[rnd.round_id]

    # -- updates ---------------------------------------------------------------------------------
    def submit_update(
        self, device_id: str, round_id: int, update: UpdateInput, *, provenance: str = "",
        base_version: int | str | None = None, device: DeviceRecord | None = None,
    ) -> UpdateRecord:
        """Validate, persist and accumulate one update. Raises a QFlareError and changes nothing on refusal.

        ``base_version``: the model version the device trained on (the signed ``?base_version=`` of its
        upload). Required in async mode, where it decides the update's staleness; in sync mode, if given,
        it must be the round's base version. ``device``: the device's row as the gateway read it for this
        request (read here if not given)."""
        rnd = self.repo.get_round(round_id)
        if rnd is None:
            raise NotFound(f"round {round_id} does not exist", reason="unknown_round")
        if rnd.status != "open":
            raise RoundClosed(f"round {round_id} is closed ({rnd.status})")
        if self.clock() > rnd.deadline_at:
            raise RoundClosed(f"round {round_id} passed its deadline", reason="deadline_passed")
        base_version = _parse_version(base_version)
        staleness = self._check_base_version(rnd, base_version)
        if device_id not in rnd.selected and not self.asynchronous:
            raise PermissionDenied(f"device {device_id!r} is not selected for round {round_id}", reason="not_selected")
        if self.repo.has_update(round_id, device_id):
            raise DuplicateUpdate(f"device {device_id!r} already sent an update for round {round_id}")
        with self._lock:
            # The round read above may have closed since (closing holds this lock): re-beginning it in the
            # backend would start a closed round on a base the enclave no longer signs (403
            # base_model_not_signed, where the device must hear round_closed and, in async mode, rebase).
            self._raise_if_closed(round_id)
            self._ensure_round(rnd)
        started = time.perf_counter()
        try:
            validated = self.backend.validate(round_id, update)
        except NotFound as exc:
            # The round closed while this upload was in flight: to the device that is a late update.
            if exc.reason == "unknown_round":
                self._raise_if_closed(round_id)
            raise
        except InvalidInput as exc:
            self.reputation.strike(device_id, round_id, f"refused {exc.reason}")
            raise
        if device is None or device.device_id != device_id:
            device = self.repo.get_device(device_id)
        cap = device.max_examples if device is not None else None
        if cap is not None and validated.num_examples > cap:  # the enclave refuses it itself (its registry)
            self.reputation.strike(device_id, round_id, "refused num_examples_above_cap")
            raise InvalidInput(f"the update claims {validated.num_examples} examples; device {device_id!r} is "
                               f"enrolled for at most {cap}", reason="num_examples_above_cap")
        if staleness is not None:
            provenance = f"base_version={base_version} staleness={staleness} {provenance}".strip()
        with self._lock:
            self._update_seconds[round_id] = self._update_seconds.get(round_id, 0.0) + time.perf_counter() - started
            self._raise_if_closed(round_id)
            record = self._accept(device_id, validated, provenance)
            if staleness is not None:
                self._staleness.setdefault(round_id, {})[device_id] = staleness
            crash_point("after_commit")  # crash tests only (server/faults.py)
            why = self._full(rnd, self._counts[round_id])
            # A follower leaves closing to the owner, whose next tick counts this update from the database.
            if why is not None and self._owner and self.lease.held():
                self._aggregate(rnd, reason=why)
                self._maybe_open_round()
        return record

    def _check_base_version(self, rnd: RoundRecord, base_version: int | None) -> int | None:
        """The staleness of an update computed on ``base_version`` for ``rnd`` (async), or raise.

        Sync: ``None`` (a given base version must be the round's). Async: ``rnd.base_version - base_version``;
        refused, before anything is stored, when the version never existed (``unknown_model_version``) or
        is more than ``rounds.max_staleness`` versions old (``too_stale``)."""
        if not self.asynchronous:
            if base_version is not None and base_version != rnd.base_version:
                raise InvalidInput(f"round {rnd.round_id} trains on model version {rnd.base_version}, not "
                                   f"{base_version}", reason="base_version_mismatch")
            return None
        if base_version is None:
            raise InvalidInput("async rounds: the upload must name the model version it was trained on "
                               "(?base_version=)", reason="base_version_required")
        if base_version < 0 or base_version > rnd.base_version or self.repo.get_model(base_version) is None:
            raise NotFound(f"model version {base_version} never existed (buffer {rnd.round_id} builds on version "
                           f"{rnd.base_version})", reason="unknown_model_version")
        staleness = rnd.base_version - base_version
        limit = self.config.rounds.max_staleness
        if staleness > limit:
            raise UpdateRejected(f"the update was computed on model version {base_version}, {staleness} versions "
                                 f"behind version {rnd.base_version} (rounds.max_staleness {limit})",
                                 reason="too_stale")
        return staleness

    def _raise_if_closed(self, round_id: int) -> None:
        rnd = self.repo.get_round(round_id)
        if rnd is not None and rnd.status != "open":
            raise RoundClosed(f"round {round_id} closed while the update was in flight ({rnd.status})")

    def _accept(self, device_id: str, update: ValidatedUpdate, provenance: str = "") -> UpdateRecord:
        # The database row first: its unique constraint decides duplicates atomically, and only an
        # update that is durably recorded enters the running aggregate.
        # Its audit entry is committed with it (the ledger outbox) and appended after: a crash in between
        # cannot lose it (the next start drains the outbox).
        entry = (self.ledger.update_entry(device_id, update.round_id, update.sha256, update.num_examples,
                                          update.norm, entry=update.ledger_entry)
                 if self.ledger is not None else None)
        record = self.repo.add_update(
            update.round_id,
            device_id,
            num_examples=update.num_examples,
            train_loss=update.train_loss,
            sha256=update.sha256,
            blob=update.stored,
            size_bytes=update.size_bytes,
            dp_epsilon=update.dp_epsilon,
            now=self.clock(),
            event=NewEvent("update_accepted", device_id=device_id, round_id=update.round_id,
                           detail=f"{update.sha256} {provenance}".strip()),
            ledger=(entry,) if entry is not None else (),
        )
        # From here the update is durably accepted: count it even if the backend fails now, since a
        # restarted backend replays it from storage.
        self._counts[update.round_id] = self._counts.get(update.round_id, 0) + 1
        self._seen.setdefault(update.round_id, set()).add(device_id)
        started = time.perf_counter()
        try:
            self.backend.accumulate(update)
        except EnclaveError as exc:
            if exc.reason != "enclave_unavailable":
                raise
            log.warning("enclave unavailable while counting an accepted update; retrying once (it restarts)")
            self.backend.accumulate(update)
        self._update_seconds[update.round_id] = (self._update_seconds.get(update.round_id, 0.0)
                                                 + time.perf_counter() - started)
        crash_point("before_ledger_append")  # crash tests only (server/faults.py)
        if self.ledger is not None:
            self.ledger.drain(self.repo)
        return record

    # -- the clock -------------------------------------------------------------------------------
    def tick(self) -> None:
        """Close a round at its deadline, and open the next round when enough devices are active.

        Only the lease holder does this; a follower only keeps its backend on the open round. The owner
        first counts what other workers accepted (replaying it from the database), so a quorum reached
        across workers closes the round and none of their updates is discarded. Then long-polls are woken
        if the open round changed (here or in another worker).
        """
        self._tick()
        self._announce()
        if self.ledger is not None:
            self.ledger.drain(self.repo)  # entries whose append failed or another worker left (usually none)
        self._drop_blobs()

    BLOBS_DROPPED_PER_TICK = 32

    def _drop_blobs(self) -> None:
        """Drop closed rounds' stored updates, a bounded number per tick and outside the lock: a 1000-update
        round dropped in its close transaction held every request for minutes (``UpdateStore.drop_update_blobs``)."""
        budget = self.BLOBS_DROPPED_PER_TICK
        for round_id in sorted(self._blobs_to_drop):
            n = self.repo.drop_update_blobs(round_id, limit=budget)
            if n < budget:  # fewer than asked: none left in this round
                self._blobs_to_drop.discard(round_id)
            budget -= n
            if budget <= 0:
                return

    def _tick(self) -> None:
        with self._lock:
            held = self.lease.held()
            if held and not self._owner:
                # Rebuild from the database: another owner may have moved on. A shared enclave (one service
                # behind every worker) already holds the round: keep it; bootstrap replays what it lacks.
                if not getattr(self.backend, "shared", False):
                    self._forget_rounds(keep=set())
                self.bootstrap()
            self._owner = held
            rnd = self.current_round()
            if not held:
                if rnd is not None:
                    self._ensure_round(rnd)
                self._forget_rounds(keep={rnd.round_id} if rnd is not None else set())
                return
            if rnd is not None:
                self._ensure_round(rnd)
                self._sync(rnd)
                count = self._counts.get(rnd.round_id, 0)
                rc = self.config.rounds
                why = self._full(rnd, count)
                if why is not None:
                    self._aggregate(rnd, reason=why)
                elif self.clock() >= rnd.deadline_at:
                    if count >= rc.min_quorum:
                        self._aggregate(rnd, reason="deadline")
                    else:
                        self._fail(rnd, reason="deadline_no_quorum", expect_updates=count)
            self._forget_rounds(keep={r.round_id for r in self.repo.open_rounds()})
            self._maybe_open_round()

    def _announce(self) -> None:
        """Wake long-polls if the open round changed since the last look (rounds another worker opened)."""
        rnd = self.current_round()
        now = (rnd.round_id, rnd.status) if rnd is not None else (-1, "none")
        if now != self._announced:
            self._announced = now
            self.changed.notify()

    def _ensure_round(self, rnd: RoundRecord) -> None:
        """Begin ``rnd`` in this process's backend if it is not yet (a round another process opened)."""
        if rnd.round_id not in self._seen:
            self.backend.begin_round(rnd.round_id, self.repo.model_blob(rnd.base_version), self.spec)
            self._seen[rnd.round_id] = set()
            self._counts.setdefault(rnd.round_id, 0)

    def _sync(self, rnd: RoundRecord) -> None:
        """Count the updates of ``rnd`` that other processes accepted (the owner, before it decides)."""
        seen = self._seen.setdefault(rnd.round_id, set())
        seen |= self._replay_stored(rnd.round_id, [d for d in self.repo.update_device_ids(rnd.round_id)
                                                   if d not in seen])
        self._counts[rnd.round_id] = len(seen)

    def _replay_stored(self, round_id: int, device_ids: list[str]) -> set[str]:
        """Count ``device_ids``' stored updates in the backend (in acceptance order); returns the devices counted.

        One stored update in memory at a time: 500 x 4 MB read at once was 2 GB in the owner. A shared
        enclave (``counted_devices``) already counts what another worker forwarded to it: those are
        recognised by their stored header and not read back (nor sent to the enclave) at all."""
        counted_fn = getattr(self.backend, "counted_devices", None)
        seen: set[str] = set()
        if counted_fn is not None and device_ids:
            heads = self.repo.update_heads(round_id, device_ids, size=getattr(self.backend, "HEAD_BYTES", 4096))
            seen = counted_fn(round_id, heads)
        replays = self._replays.setdefault(round_id, [0, 0])
        replays[1] += len(seen)
        for device_id in device_ids:
            if device_id in seen:
                continue
            blob = self.repo.update_blob(round_id, device_id)
            if blob is None:  # dropped: a closed round's
                continue
            self.backend.replay(round_id, blob)
            del blob  # before the next one is read
            seen.add(device_id)
            replays[0] += 1
        return seen

    def _forget_rounds(self, *, keep: set[int]) -> None:
        for round_id in [r for r in self._seen if r not in keep]:
            try:
                self.backend.abort_round(round_id)
            except Exception:  # noqa: BLE001 - forgetting local state must not stop the clock
                log.exception("round %d: the backend could not drop it", round_id)
            self._seen.pop(round_id, None)
            self._counts.pop(round_id, None)
            self._task_signatures.pop(round_id, None)
            self._update_seconds.pop(round_id, None)
            self._replays.pop(round_id, None)
            self._staleness.pop(round_id, None)

    def _devices_needed(self) -> int:
        """Active devices a round waits for: ``rounds.min_devices`` less the devices this server took out
        (quarantined or revoked: otherwise quarantine wedges a fleet sized to ``min_devices``), never fewer
        than the quorum a round needs (async: the buffer's size). Devices not yet enrolled still count: a
        fleet that is still being enrolled waits for ``min_devices`` as before."""
        rc = self.config.rounds
        excluded = self.repo.count_devices("quarantined") + self.repo.count_devices("revoked")
        floor = max(rc.min_quorum, rc.buffer) if self.asynchronous else rc.min_quorum  # one update per device
        return min(rc.min_devices, max(floor, rc.min_devices - excluded))

    def _maybe_open_round(self) -> None:
        if self.current_round() is not None or self.finished():
            return
        rc = self.config.rounds
        now = self.clock()
        active = self.repo.active_devices(since=now - rc.active_window_seconds)
        if len(active) < self._devices_needed():
            return
        round_id = self.repo.last_round_id() + 1
        k = max(rc.min_quorum, min(len(active), round(rc.fraction * len(active)) or 1))
        if self.asynchronous:  # a buffer is open to every device; its record names those active at opening
            k, selected = len(active), sorted(active)
        elif self.select is not None:  # qflare.server.selection.AdaptiveSelector
            selected = self.select(self.repo, active, k, round_id=round_id, seed=f"{rc.seed}:{round_id}")
        else:
            rng = random.Random(f"{rc.seed}:{round_id}")
            selected = sorted(rng.sample(active, k))
        model = self.repo.latest_model()
        assert model is not None, "bootstrap() creates version 0"
        # The backend first, then the stored round: a round that any reader can see is one the backend
        # already aggregates (the other order handed out tasks the enclave answered with unknown_round).
        self.backend.begin_round(round_id, self.repo.model_blob(model.version), self.spec)
        try:
            self.repo.open_round(
                round_id, base_version=model.version, selected=selected, now=now,
                deadline_at=now + rc.deadline_seconds,
                event=NewEvent("round_opened", round_id=round_id, detail=",".join(selected)),
            )
        except BaseException:
            self.backend.abort_round(round_id)
            raise
        self._counts[round_id] = 0
        self._seen[round_id] = set()
        if self.ledger is not None:
            self.ledger.round_opened(round_id, model.sha256, self.config.aggregation.rule, now + rc.deadline_seconds)
        self.changed.notify()
        log.info("round %d opened: %d of %d active devices selected", round_id, k, len(active))

    def _aggregate(self, rnd: RoundRecord, *, reason: str) -> None:
        """Close ``rnd`` with a new model; any failure fails the round (with its reason) instead of wedging it."""
        try:
            with self.lease.closing(rnd.round_id):  # no worker commits an update to it meanwhile
                self._close_with_model(rnd, reason=reason)
        except Conflict as exc:
            if exc.reason != "round_changed":
                raise
            # Another worker accepted an update after this one counted: rebuild the aggregate from the
            # database; the next tick closes with every update.
            log.info("round %d: an update arrived while closing; recounting", rnd.round_id)
            self._forget_rounds(keep={r for r in self._seen if r != rnd.round_id})
            self._ensure_round(rnd)
            self._sync(rnd)
        except AggregationError as exc:
            self._fail(rnd, reason=exc.reason, detail=exc.message)
        except Exception as exc:  # noqa: BLE001 - any error at close must fail the round, never wedge it
            log.exception("round %d: closing failed", rnd.round_id)
            why = exc.reason if isinstance(exc, QFlareError) else "close_failed"
            self._fail(rnd, reason=why, detail=f"{type(exc).__name__}: {exc}"[:500], keep_updates=True)

    def _close_with_model(self, rnd: RoundRecord, *, reason: str) -> None:
        started = time.perf_counter()
        self._ensure_round(rnd)
        self._sync(rnd)
        counted = self._counts.get(rnd.round_id, 0)
        replays = self._replays.get(rnd.round_id, [0, 0])
        blob = self.backend.finalize(rnd.round_id)
        crash_point("during_aggregation")  # crash tests only (server/faults.py)
        updates = self.repo.round_updates(rnd.round_id)
        # The rule's verdicts: by update hash in process, by device from the enclave (which counted each once).
        flagged_fn = getattr(self.backend, "flagged_updates", None)
        flagged = set(flagged_fn(rnd.round_id)) if flagged_fn is not None else set()
        devices_fn = getattr(self.backend, "flagged_devices", None)
        flagged_devices = set(devices_fn(rnd.round_id)) if devices_fn is not None else set()
        signature = self.backend.model_signature(rnd.round_id)
        metrics: dict[str, Any] = {
            "num_updates": len(updates),
            "num_selected": len(rnd.selected),
            "total_examples": sum(u.num_examples for u in updates),
            "aggregation_seconds": time.perf_counter() - started,
            "update_seconds": self._update_seconds.pop(rnd.round_id, 0.0),  # this process's validate + add
            # this process's reads of stored updates back from the database, and the reads it did not need
            "replayed_updates": replays[0],
            "replay_skipped_updates": replays[1],
            "round_seconds": self.clock() - rnd.opened_at,
        }
        he_metrics = getattr(self.backend, "round_metrics", None)  # CKKS (server/he_aggregation.py)
        if he_metrics is not None:
            metrics["he"] = he_metrics(rnd.round_id)
        losses = [(u.train_loss, u.num_examples) for u in updates if u.train_loss is not None]
        if losses:
            metrics["train_loss"] = sum(lo * n for lo, n in losses) / sum(n for _, n in losses)
        if self.evaluator is not None and self.config.evaluation.enabled:
            metrics.update(self.evaluator.evaluate(blob))
        if self.privacy is not None:
            metrics["privacy"] = self.privacy.spend(self.config.rounds.fraction).as_dict()
        local = {u.device_id: u.dp_epsilon for u in updates if u.dp_epsilon is not None}
        if local:  # local DP: what each device reports it has spent, signed with its update (not verifiable)
            metrics["local_dp"] = {"devices": len(local), "epsilon_max": max(local.values()),
                                   "epsilon_mean": sum(local.values()) / len(local),
                                   "delta": self.config.training.dp.delta if self.config.training.dp else None,
                                   "epsilon_per_device": dict(sorted(local.items()))}
        stale = list(self._staleness.pop(rnd.round_id, {}).values())
        if self.asynchronous and stale:  # of the updates this process accepted (not those replayed after a restart)
            metrics["staleness_mean"] = sum(stale) / len(stale)
            metrics["staleness_max"] = max(stale)
        latest = self.repo.latest_model()
        version = (latest.version if latest is not None else 0) + 1
        ledger_entries = (
            self.ledger.round_closed_entries(rnd.round_id, sha256_hex(blob), self.config.aggregation.rule,
                                             [(u.device_id, u.num_examples) for u in updates],
                                             entry=self.backend.published_entry(rnd.round_id))
            if self.ledger is not None else []
        )
        crash_point("during_model_write")  # crash tests only (server/faults.py)
        self.repo.close_round(
            rnd.round_id,
            status="aggregated",
            reason=reason,
            now=self.clock(),
            new_model=(version, blob, sha256_hex(blob), self.spec.fingerprint(), signature),
            metrics=metrics,
            drop_update_blobs=False,  # after the close, a few per tick (_drop_blobs): not under the lock
            expect_updates=counted,
            event=NewEvent("round_aggregated", round_id=rnd.round_id,
                           detail=f"version {version} ({reason}, {len(updates)} updates)"),
            ledger=ledger_entries,
        )
        if not self.config.server.keep_update_blobs:
            self._blobs_to_drop.add(rnd.round_id)
        self._counts.pop(rnd.round_id, None)
        self._seen.pop(rnd.round_id, None)
        self._task_signatures.pop(rnd.round_id, None)
        self._replays.pop(rnd.round_id, None)
        for u in updates:
            if u.sha256 in flagged or u.device_id in flagged_devices:
                self.reputation.strike(u.device_id, rnd.round_id, f"flagged by {self.config.aggregation.rule}")
        if self.ledger is not None:
            self.ledger.drain(self.repo)
            self.ledger.checkpoint()
        self.changed.notify()
        log.info("round %d aggregated (%s): %d updates -> model v%d %s", rnd.round_id, reason, len(updates),
                 version, {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})

    def _fail(self, rnd: RoundRecord, *, reason: str, detail: str | None = None, keep_updates: bool = False,
              expect_updates: int | None = None) -> None:
        """Fail ``rnd``. ``keep_updates`` keeps the accepted updates' stored bytes (a failure of the server,
        not of the devices: an operator can inspect or re-aggregate them). With ``expect_updates`` the
        round fails only if it still has exactly that many updates (else the next tick decides again)."""
        with self.lease.closing(rnd.round_id):  # no worker commits an update to it meanwhile
            self._fail_closing(rnd, reason=reason, detail=detail, keep_updates=keep_updates,
                               expect_updates=expect_updates)

    def _fail_closing(self, rnd: RoundRecord, *, reason: str, detail: str | None, keep_updates: bool,
                      expect_updates: int | None) -> None:
        if expect_updates is not None and len(self.repo.update_device_ids(rnd.round_id)) != expect_updates:
            return
        try:
            self.backend.abort_round(rnd.round_id)
        except Exception:  # noqa: BLE001 - the round fails in storage whatever the backend says
            log.exception("round %d: the backend could not abort it", rnd.round_id)
        try:
            self.repo.close_round(rnd.round_id, status="failed", reason=reason, now=self.clock(),
                                  drop_update_blobs=False, expect_updates=expect_updates,
                                  event=NewEvent("round_failed", round_id=rnd.round_id, reason=reason, detail=detail),
                                  ledger=self.ledger.round_failed_entries(rnd.round_id, reason)
                                  if self.ledger is not None else ())
        except Conflict as exc:
            if exc.reason != "round_changed":
                raise
            self._seen.pop(rnd.round_id, None)  # the backend dropped it: the next tick begins and recounts
            return
        if not keep_updates:
            self._blobs_to_drop.add(rnd.round_id)
        self._counts.pop(rnd.round_id, None)
        self._seen.pop(rnd.round_id, None)
        self._task_signatures.pop(rnd.round_id, None)
        self._update_seconds.pop(rnd.round_id, None)
        self._replays.pop(rnd.round_id, None)
        self._staleness.pop(rnd.round_id, None)
        if self.ledger is not None:
            self.ledger.drain(self.repo)
            self.ledger.checkpoint()
        self.changed.notify()
        log.warning("round %d failed: %s%s", rnd.round_id, reason, f" ({detail})" if detail else "")

    def report_metrics(self, device_id: str, payload: bytes) -> dict[str, Any]:
        """Record a device's signed report of its held-out metric (personalised FL; server/personal.py)."""
        from qflare.server.personal import EVENT_KIND, parse_report

        report = parse_report(payload, self.metric)
        self.repo.add_event(EVENT_KIND, now=self.clock(), device_id=device_id,
                            detail=json.dumps(report, sort_keys=True, separators=(",", ":")))
        return report

    def load_model(self, version: int) -> bytes:
        return self.repo.model_blob(version)

    def verify_model(self, version: int) -> None:
        """Check a stored model's bytes against its recorded SHA-256 and spec."""
        blob = self.repo.model_blob(version)
        rec = self.repo.get_model(version)
        assert rec is not None
        if sha256_hex(blob) != rec.sha256:
            raise AggregationError(f"model version {version} does not match its SHA-256", reason="model_corrupt")
        load_arrays(blob, self.spec)
