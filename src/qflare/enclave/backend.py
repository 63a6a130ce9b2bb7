"""``EnclaveAggregator``: an :class:`~qflare.fl.port.AggregationBackend` behind the enclave boundary.

The server hands it update envelopes (already size-, device-, timestamp-, nonce- and
signature-checked); the enclave decrypts, validates, keeps the tensors, and returns a receipt whose
``stored`` bytes are the update sealed by the enclave. The server persists only that ciphertext, and
can replay it after a restart. The running aggregate never leaves the enclave; ``finalize`` returns
the new global model and :meth:`EnclaveAggregator.model_signature` the enclave's signature over it.

Crash handling: every update counted since the enclave's last sealed checkpoint is remembered here
(sealed). If the enclave process dies, the call in flight raises ``EnclaveError("enclave_unavailable")``;
the next call starts a new process, which restores each open round from its checkpoint, and this
class replays the remembered sealed updates the checkpoint does not cover. The enclave counts each
update id once, so replays never double-count.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from qflare.crypto.envelope import parse_envelope
from qflare.crypto.signing import SigningKey
from qflare.enclave.client import Enclave, EnclaveIdentity, OpenedRequest, UpdateReceipt
from qflare.enclave.config import EnclaveConfig
from qflare.enclave.launcher import DEFAULT_REGION_BYTES, GramineLauncher, SimulatedLauncher, load_or_create_signing_key
from qflare.enclave.operator import DeviceRegistrar
from qflare.enclave.quote import EnclavePublicKeys
from qflare.enclave.registry import DeviceRegistration
from qflare.enclave.statements import RoundTask
from qflare.enclave.stored import stored_update_id
from qflare.errors import EnclaveError, NotFound, QFlareError
from qflare.fl.port import PlainUpdate, SealedUpdate, UpdateInput, ValidatedUpdate
from qflare.fl.spec import ModelSpec

__all__ = ["EnclaveAggregator", "EnclaveUpdateHandle"]

_KEEP_SIGNATURES: Final = 64
DEFAULT_MAX_HELD_BYTES: Final = 256 * 1024 * 1024
"""Stored updates the host keeps in memory until a checkpoint covers them; more are spilled to files."""


@dataclass(frozen=True)
class EnclaveUpdateHandle:
    """``ValidatedUpdate.handle`` of an enclave-held update: an opaque reference, no tensors.

    ``request_hash`` identifies the upload request, for :meth:`EnclaveAggregator.seal_response`.
    """

    update_id: str
    request_hash: bytes | None


@dataclass
class _Held:
    """A stored update counted since the enclave's last checkpoint: in memory, or spilled to a file."""

    update_id: str
    size: int
    blob: bytes | None = field(default=None, repr=False)
    path: Path | None = None
    written: Future[None] | None = field(default=None, repr=False)  # the spill write, on a worker thread

    def load(self) -> bytes:
        if self.blob is not None:
            return self.blob
        assert self.path is not None
        if self.written is not None:
            self.written.result()
        return self.path.read_bytes()

    def drop(self) -> None:
        if self.path is not None:
            if self.written is not None:
                self.written.exception()  # wait for it; a failed write leaves nothing to remove
            self.path.unlink(missing_ok=True)


def _write_file(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class _HostRound:
    base_model: bytes
    spec: ModelSpec
    # Stored updates counted since the enclave's last checkpoint (what a restarted enclave must replay).
    uncheckpointed: list[_Held] = field(default_factory=list)
    # Every update id counted in this round: a restored enclave must count exactly these.
    counted: set[str] = field(default_factory=set)

    def keep(self, keep: Callable[[_Held], bool]) -> None:
        """Keep only the held updates ``keep`` accepts (the others' spill files are removed)."""
        kept = []
        for held in self.uncheckpointed:
            if keep(held):
                kept.append(held)
            else:
                held.drop()
        self.uncheckpointed = kept


class EnclaveAggregator:
    """Validates and aggregates updates inside an enclave process.

    Parameters
    ----------
    enclave:
        The supervised enclave (see :meth:`launch` for the usual construction).
    inputs:
        What :meth:`validate` receives: ``"envelope"`` (request envelopes, decrypted inside; the server
        never sees the update) or ``"plaintext"`` (raw updates, for a server that decrypts itself).
    allowed_key_sources:
        Envelope key sources to accept in :meth:`validate`; the enclave also applies its own
        (measured) list.
    max_held_bytes:
        Memory for the stored updates kept until a sealed checkpoint covers them (for a replay into a
        restarted enclave); beyond it they are written to ``spill_dir`` (ciphertext only: the stored
        form the server persists anyway) and read back only for a replay.
    spill_dir:
        Where those go (default: ``host-held/`` in the launcher's work directory; ``None`` there:
        a temporary directory).
    """

    def __init__(
        self,
        enclave: Enclave,
        *,
        inputs: Literal["envelope", "plaintext"] = "envelope",
        allowed_key_sources: Collection[str] = ("mlkem", "hybrid"),
        max_held_bytes: int = DEFAULT_MAX_HELD_BYTES,
        spill_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if inputs not in ("envelope", "plaintext"):
            raise ValueError("inputs must be 'envelope' or 'plaintext'")
        self.enclave = enclave
        self.inputs = inputs
        self.allowed_key_sources = tuple(sorted(allowed_key_sources))
        self._lock = enclave.lock  # one lock for both: restart hooks run inside enclave calls
        self._rounds: dict[int, _HostRound] = {}
        self._signatures: OrderedDict[int, bytes] = OrderedDict()
        self._entries: OrderedDict[int, bytes | None] = OrderedDict()  # round -> signed aggregate_published
        self._flagged: OrderedDict[int, list[str]] = OrderedDict()  # round -> devices the rule flagged
        self.clock: Callable[[], float] = time.time
        """The time written into the enclave's signed ledger entries (the server sets its own clock)."""
        # Registrations handed to the enclave (re-sent after a restart), and who signs new ones.
        self._registered: dict[str, tuple[DeviceRegistration, bytes, bytes]] = {}
        self.registrar: DeviceRegistrar | None = None
        self.max_held_bytes = max_held_bytes
        work_dir = getattr(enclave.launcher, "work_dir", None)
        self._spill_dir: Path | None = (
            Path(spill_dir) if spill_dir is not None else Path(work_dir) / "host-held" if work_dir is not None else None
        )
        self._spill_tmp: tempfile.TemporaryDirectory[str] | None = None
        self._spiller = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qflare-host-held")
        enclave.add_restart_hook(self._on_restart)

    @classmethod
    def launch(
        cls,
        work_dir: str | os.PathLike[str],
        *,
        backend: Literal["simulated", "gramine"] = "simulated",
        config: EnclaveConfig | None = None,
        signing_key: SigningKey | None = None,
        inputs: Literal["envelope", "plaintext"] = "envelope",
        region_bytes: int = DEFAULT_REGION_BYTES,
        call_timeout: float = 300.0,
    ) -> EnclaveAggregator:
        """Start an enclave in ``work_dir`` and wrap it.

        For the simulated backend without ``signing_key``, a development signing key is created in
        ``work_dir/signer-dev-key.json`` and signs the SIGSTRUCT at launch.
        """
        cfg = config or EnclaveConfig()
        directory = Path(work_dir)
        launcher: SimulatedLauncher | GramineLauncher
        if backend == "simulated":
            key = signing_key or load_or_create_signing_key(directory / "signer-dev-key.json")
            launcher = SimulatedLauncher(directory, config=cfg, signing_key=key, region_bytes=region_bytes)
        elif backend == "gramine":
            launcher = GramineLauncher(directory, config=cfg, region_bytes=region_bytes)
        else:
            raise ValueError("backend must be 'simulated' or 'gramine'")
        enclave = Enclave(launcher, call_timeout=call_timeout)
        enclave.start()
        return cls(enclave, inputs=inputs)

    # -- AggregationBackend ---------------------------------------------------------------------

    def begin_round(self, round_id: int, base_model: bytes, spec: ModelSpec) -> None:
        """Start aggregating ``round_id`` on top of ``base_model``."""
        with self._lock:
            self._rounds[round_id] = _HostRound(base_model=bytes(base_model), spec=spec)
            self.enclave.begin_round(round_id, base_model, spec)

    def held_bytes(self, round_id: int | None = None) -> int:
        """Bytes of stored updates this host keeps in memory (for ``round_id``, or all rounds) until a sealed
        checkpoint covers them; the rest of what it keeps is spilled to files."""
        with self._lock:
            rounds = self._rounds.values() if round_id is None else [self._rounds.get(round_id)]
            return sum(h.size for st in rounds if st is not None for h in st.uncheckpointed if h.blob is not None)

    def _spill_path(self, update_id: str) -> Path:
        if self._spill_dir is None:
            self._spill_tmp = self._spill_tmp or tempfile.TemporaryDirectory(prefix="qflare-host-held-")
            self._spill_dir = Path(self._spill_tmp.name)
        self._spill_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self._spill_dir / f"{update_id}.stored"

    def round_base_sha256(self, round_id: int) -> str | None:
        """SHA-256 of the base model ``round_id`` is aggregated on (``None``: not being aggregated)."""
        with self._lock:
            state = self._rounds.get(round_id)
            return None if state is None else hashlib.sha256(state.base_model).hexdigest()

    def counted_updates(self, round_id: int) -> int:
        """How many updates the enclave has counted in ``round_id`` (0 when it is not being aggregated)."""
        with self._lock:
            state = self._rounds.get(round_id)
            return 0 if state is None else len(state.counted)

    def is_counted(self, round_id: int, update_id: str) -> bool:
        """Whether the enclave counts ``update_id`` in ``round_id`` (or will, after restoring from a crash)."""
        with self._lock:
            state = self._rounds.get(round_id)
            return state is not None and update_id in state.counted

    def _host_round(self, round_id: int) -> _HostRound:
        state = self._rounds.get(round_id)
        if state is None:
            raise NotFound(f"round {round_id} is not being aggregated", reason="unknown_round")
        return state

    def validate(self, round_id: int, update: UpdateInput) -> ValidatedUpdate:
        """Validate one update inside the enclave: a :class:`SealedUpdate` (``inputs="envelope"``, the
        server's path) or a :class:`PlainUpdate` (``inputs="plaintext"``); each mode accepts only its own."""
        if self.inputs == "envelope":
            if not isinstance(update, SealedUpdate):
                raise TypeError("this EnclaveAggregator validates sealed updates (SealedUpdate) only")
            return self.validate_envelope(
                round_id, update.envelope, allowed_key_sources=update.allowed_key_sources or None,
                extra_secret=update.extra_secret,
            )
        if not isinstance(update, PlainUpdate):
            raise TypeError("this EnclaveAggregator validates plaintext updates (PlainUpdate) only")
        with self._lock:
            self._host_round(round_id)
            receipt = self.enclave.validate_update(round_id, update.data, kind="plaintext", time_ms=self._now_ms())
        return self._validated(round_id, receipt)

    def validate_envelope(
        self,
        round_id: int,
        envelope: bytes,
        *,
        allowed_key_sources: Collection[str] | None = None,
        extra_secret: bytes | None = None,
    ) -> ValidatedUpdate:
        """Decrypt and validate an update envelope inside the enclave.

        Parameters
        ----------
        allowed_key_sources:
            This device's allowed key sources (default: the aggregator's).
        extra_secret:
            The QKD key for a ``hybrid`` or ``qkd`` envelope.
        """
        sources = self.allowed_key_sources if allowed_key_sources is None else tuple(sorted(allowed_key_sources))
        with self._lock:
            self._host_round(round_id)
            if self.registrar is not None:
                self.sync_device(parse_envelope(envelope, max_size=max(len(envelope), 1)).device_id)
            receipt = self.enclave.validate_update(
                round_id, envelope, kind="envelope", allowed_key_sources=sources, extra_secret=extra_secret,
                time_ms=self._now_ms(),
            )
        return self._validated(round_id, receipt)

    @staticmethod
    def _validated(round_id: int, receipt: UpdateReceipt) -> ValidatedUpdate:
        return ValidatedUpdate(
            round_id=round_id,
            num_examples=receipt.num_examples,
            train_loss=receipt.train_loss,
            sha256=receipt.sha256,
            size_bytes=receipt.size_bytes,
            stored=receipt.stored,
            handle=EnclaveUpdateHandle(update_id=receipt.update_id, request_hash=receipt.request_hash),
            norm=receipt.norm,
            ledger_entry=receipt.ledger_entry,
            dp_epsilon=receipt.dp_epsilon,
        )

    def _now_ms(self) -> int:
        return max(0, int(round(self.clock() * 1000)))

    def _drop_covered(self, covered: tuple[str, ...]) -> None:
        """Forget stored copies a sealed checkpoint now holds (ids are unique across rounds)."""
        if covered:
            gone = set(covered)
            for state in self._rounds.values():
                state.keep(lambda h: h.update_id not in gone)

    def _remember(self, state: _HostRound, update_id: str, stored: bytes) -> None:
        if update_id not in state.counted:
            state.counted.add(update_id)
            if self.held_bytes() + len(stored) <= self.max_held_bytes:
                state.uncheckpointed.append(_Held(update_id, len(stored), blob=stored))
            else:  # written in the background: the upload's answer does not wait for the disk
                path = self._spill_path(update_id)
                written = self._spiller.submit(_write_file, path, stored)
                state.uncheckpointed.append(_Held(update_id, len(stored), path=path, written=written))

    @staticmethod
    def _forget_unless_unavailable(state: _HostRound, update_id: str, exc: QFlareError) -> None:
        """A refused update is not counted; one caught in an enclave failure will be, after the restart."""
        if isinstance(exc, EnclaveError) and exc.reason in ("enclave_unavailable", "enclave_restore_failed"):
            return
        state.counted.discard(update_id)
        state.keep(lambda h: h.update_id != update_id)

    def accumulate(self, update: ValidatedUpdate) -> None:
        """Count a validated update; if the enclave no longer holds it, count its sealed copy."""
        handle = update.handle
        if not isinstance(handle, EnclaveUpdateHandle):
            raise TypeError("this update was not validated by an EnclaveAggregator")
        with self._lock:
            state = self._host_round(update.round_id)
            # Remember the stored copy first: if the enclave dies during the call, a restart replays it.
            self._remember(state, handle.update_id, update.stored)
            try:
                try:
                    result = self.enclave.accumulate(update.round_id, handle.update_id)
                except EnclaveError as exc:
                    if exc.reason != "unknown_update":
                        raise
                    result = self.enclave.replay(update.round_id, update.stored)
            except QFlareError as exc:
                self._forget_unless_unavailable(state, handle.update_id, exc)
                raise
            self._drop_covered(result.covered)

    def replay(self, round_id: int, stored: bytes) -> None:
        """Count an update the server stored before a restart (its sealed bytes)."""
        _, update_id = stored_update_id(stored)
        with self._lock:
            state = self._host_round(round_id)
            self._remember(state, update_id, bytes(stored))
            try:
                result = self.enclave.replay(round_id, stored)
            except QFlareError as exc:
                self._forget_unless_unavailable(state, update_id, exc)
                raise
            self._drop_covered(result.covered)

    def finalize(self, round_id: int) -> bytes:
        """Aggregate and sign the round; returns the new global model. See :meth:`model_signature`."""
        with self._lock:
            self._host_round(round_id)
            done = self.enclave.finalize(round_id, time_ms=self._now_ms())
            self._rounds.pop(round_id).keep(lambda _: False)
            self._signatures[round_id] = done.signature
            self._entries[round_id] = done.ledger_entry
            self._flagged[round_id] = list(done.flagged)
            while len(self._flagged) > _KEEP_SIGNATURES:
                self._flagged.popitem(last=False)
            while len(self._signatures) > _KEEP_SIGNATURES:
                self._signatures.popitem(last=False)
            while len(self._entries) > _KEEP_SIGNATURES:
                self._entries.popitem(last=False)
            try:
                self.enclave.abort_round(round_id)  # drop the checkpoint now that the result is out
            except EnclaveError:
                pass  # the stale checkpoint is replaced when the round id is begun again
            return done.model

    def flagged_devices(self, round_id: int) -> list[str]:
        """Devices whose updates the enclave's rule flagged when ``round_id`` was finalized (once; then
        forgotten): its verdicts, for reputation. The host only forwards them; it cannot add any."""
        with self._lock:
            return self._flagged.pop(round_id, [])

    def published_entry(self, round_id: int) -> bytes | None:
        """The enclave-signed ``aggregate_published`` ledger entry of a finalized round (``None`` if it made
        none: a plaintext update was counted)."""
        with self._lock:
            return self._entries.get(round_id)

    def model_signature(self, round_id: int) -> bytes:
        """The enclave's signature over the model :meth:`finalize` returned for ``round_id``.

        Persist it next to the model: edge nodes check it with
        :func:`qflare.enclave.statements.verify_model_signature` before loading the model.
        """
        with self._lock:
            signature = self._signatures.get(round_id)
        if signature is None:
            raise NotFound(f"no model signature for round {round_id}", reason="unknown_round")
        return signature

    def abort_round(self, round_id: int) -> None:
        """Forget the round without aggregating."""
        with self._lock:
            state = self._rounds.pop(round_id, None)
            if state is not None:
                state.keep(lambda _: False)
            self.enclave.abort_round(round_id)

    # -- the enclave's device registry and model chain ------------------------------------------

    def register_device(self, statement: bytes, signature: bytes) -> None:
        """Hand the enclave an operator-signed registration (kept here and re-sent after restarts)."""
        with self._lock:
            result = self.enclave.register_device(statement, signature)
            registration = DeviceRegistration.from_bytes(statement)
            current = self._registered.get(result.device_id)
            if current is None or current[0].sequence <= registration.sequence:
                self._registered[result.device_id] = (registration, bytes(statement), bytes(signature))

    def sync_device(self, device_id: str) -> None:
        """Bring the enclave's statement for ``device_id`` up to the server's records (needs :attr:`registrar`)."""
        if self.registrar is None:
            raise EnclaveError("no device registrar is attached", reason="no_operator_key")
        registration = self.registrar.current(device_id)
        if registration is None:
            return  # unknown to the server as well: the enclave refuses its updates
        with self._lock:
            sent = self._registered.get(device_id)
            if sent is not None and sent[0] == registration:
                return
            self.register_device(*self.registrar.operator.sign(registration))

    def sync_devices(self, device_ids: Collection[str]) -> None:
        """:meth:`sync_device` for each id (at start-up: every enrolled device)."""
        for device_id in device_ids:
            self.sync_device(device_id)

    def sign_initial_model(self, model: bytes) -> bytes:
        """The enclave's signature over the version-0 model (round 0), while it has signed nothing else."""
        with self._lock:
            return self.enclave.sign_initial_model(model)

    # -- restart --------------------------------------------------------------------------------

    def _on_restart(self) -> None:
        # The registry is sealed inside; re-sending is idempotent and covers a lost registry write.
        for _registration, statement, signature in list(self._registered.values()):
            self.enclave.register_device(statement, signature)
        self._restore_rounds()

    def _restore_rounds(self) -> None:
        for round_id, state in self._rounds.items():
            status = self.enclave.restore_round(round_id, state.base_model, state.spec)
            included = set(status.included)
            state.keep(lambda h, done=included: h.update_id not in done)  # type: ignore[misc]
            count = status.count
            for held in list(state.uncheckpointed):
                result = self.enclave.replay(round_id, held.load())
                count = result.count
                self._drop_covered(result.covered)
            if count != len(state.counted):
                # A checkpoint went missing (or was never written): the round cannot be rebuilt here.
                raise EnclaveError(
                    f"round {round_id} restored with {count} of {len(state.counted)} updates",
                    reason="restore_incomplete",
                )

    # -- the rest of the enclave's services, for the server's routes ----------------------------

    def identity(self) -> EnclaveIdentity:
        """Measurement, signer, SVN and public keys (what ``/server/keys`` should serve with a quote)."""
        return self.enclave.identity()

    def public_keys(self) -> EnclavePublicKeys:
        """The enclave's X-Wing (requests) and signing (tasks, models) public keys."""
        return self.enclave.public_keys()

    def quote(self, nonce: bytes) -> bytes:
        """An attestation quote for a device's ``nonce``."""
        return self.enclave.quote(nonce)

    def open_request(
        self, envelope: bytes, *, allowed_key_sources: Collection[str] | None = None, extra_secret: bytes | None = None
    ) -> OpenedRequest:
        """Decrypt a small non-update request (task fetch, heartbeat, model download request)."""
        sources = self.allowed_key_sources if allowed_key_sources is None else allowed_key_sources
        return self.enclave.open_request(envelope, allowed_key_sources=sources, extra_secret=extra_secret)

    def seal_response(self, request_hash: bytes, payload: bytes) -> bytes:
        """Seal the response to a request opened or validated inside (once per request)."""
        return self.enclave.seal_response(request_hash, payload)

    def sign_task(self, task: RoundTask) -> bytes:
        """The enclave's signature over a round task for an open round."""
        return self.enclave.sign_task(task)

    def sign_round_task(self, round_id: int, model_sha256: str, deadline_at: float) -> bytes:
        """:meth:`sign_task` in the server's ``AggregationBackend`` shape."""
        return self.sign_task(RoundTask(round_id=round_id, model_sha256=model_sha256, deadline_at=deadline_at))

    def sign_note(self, text: bytes, proof: Sequence[bytes] = ()) -> bytes:
        """The enclave's signed-note lines (Ed25519 type 0x01, ML-DSA-65 type 0xff) over a checkpoint body
        that extends the last one it signed (``proof``: consistency from :meth:`ledger_head`)."""
        return self.enclave.sign_note(text, proof)

    def ledger_head(self) -> tuple[int, bytes]:
        """``(size, root)`` of the last checkpoint the enclave signed."""
        return self.enclave.ledger_head()

    def close(self) -> None:
        """Stop the enclave process (sealed state stays on disk; spilled stored updates are removed)."""
        self.enclave.close()
        with self._lock:
            for state in self._rounds.values():
                state.keep(lambda _: False)
        self._spiller.shutdown(wait=True)
        if self._spill_tmp is not None:
            self._spill_tmp.cleanup()

    def __enter__(self) -> EnclaveAggregator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
