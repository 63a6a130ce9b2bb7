"""The host's side of the boundary: :class:`Enclave`, a supervised enclave process with typed calls.

Every method is one call of :mod:`qflare.enclave.ecalls`. Bulk inputs go into the shared region,
bulk outputs are copied out of it; only small headers cross the pipe. Calls are serialised (one at a
time). When the process dies or stops answering, the call in flight raises
``EnclaveError(reason="enclave_unavailable")`` (the server answers 503 with ``Retry-After``), and the
next call starts a new process and runs the registered restart hooks (the aggregator restores its
rounds from sealed state there) before it proceeds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from qflare.crypto.kem import XWingPublicKey
from qflare.crypto.signing import VerifyKey
from qflare.enclave import ecalls as ec
from qflare.enclave.channel import ChannelClosed, ChannelTimeout, read_frame, write_frame
from qflare.enclave.launcher import Launcher, RunningEnclave
from qflare.enclave.quote import EnclavePublicKeys
from qflare.enclave.statements import RoundTask
from qflare.enclave.stored import stored_envelope
from qflare.errors import EnclaveError, QFlareError
from qflare.fl.spec import ModelSpec

__all__ = ["Enclave", "EnclaveIdentity", "FinalizedRound", "OpenedRequest", "RoundStatus", "UpdateReceipt"]

log = logging.getLogger("qflare.enclave")

R = TypeVar("R")
_DEFAULT_CALL_TIMEOUT: Final = 300.0
_DEFAULT_START_TIMEOUT: Final = 60.0


@dataclass(frozen=True)
class EnclaveIdentity:
    """Who the enclave says it is; trust it only through a verified quote."""

    measurement: bytes
    signer: bytes
    isv_prod_id: int
    isv_svn: int
    debug: bool
    simulated: bool
    platform: str
    public_keys: EnclavePublicKeys
    dumpable: bool
    modules: tuple[str, ...]


@dataclass(frozen=True)
class OpenedRequest:
    """A small request decrypted inside the enclave; answer it with :meth:`Enclave.seal_response`."""

    request_hash: bytes
    device_id: str
    method: str
    path: str
    round_id: str | None
    payload: bytes


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class UpdateReceipt:
    """An update the enclave validated: the handle, metadata and the stored form (ciphertext) to persist."""

    update_id: str
    request_hash: bytes | None
    num_examples: int
    train_loss: float | None
    sha256: str
    size_bytes: int
    stored: bytes
    norm: float | None = None
    ledger_entry: bytes | None = None
    """The enclave-signed ``update_accepted`` entry (envelope updates)."""
    dp_epsilon: float | None = None


@dataclass(frozen=True)
class RoundStatus:
    """A round's state inside the enclave."""

    round_id: int
    count: int
    total_examples: int
    included: frozenset[str]
    restored: bool


@dataclass(frozen=True)
class FinalizedRound:
    """The new global model and the enclave's signature over it."""

    model: bytes
    signature: bytes
    count: int
    total_examples: int
    ledger_entry: bytes | None = None
    """The enclave-signed ``aggregate_published`` entry."""
    flagged: tuple[str, ...] = ()
    """Devices whose updates the round's rule flagged (:attr:`qflare.fl.robust.RuleOutcome.flagged`)."""


class Enclave:
    """A supervised enclave process.

    Parameters
    ----------
    launcher:
        Starts processes of one backend (:class:`~qflare.enclave.launcher.SimulatedLauncher` or
        :class:`~qflare.enclave.launcher.GramineLauncher`).
    call_timeout:
        Seconds a call may take before the process is considered hung (and killed).
    start_timeout:
        Seconds the process may take to start.
    """

    def __init__(
        self,
        launcher: Launcher,
        *,
        call_timeout: float = _DEFAULT_CALL_TIMEOUT,
        start_timeout: float = _DEFAULT_START_TIMEOUT,
    ) -> None:
        self.launcher = launcher
        self.lock = threading.RLock()
        self._call_timeout = call_timeout
        self._start_timeout = start_timeout
        self._running: RunningEnclave | None = None
        self._identity: EnclaveIdentity | None = None
        self._started_once = False
        self._restoring = False
        self._closed = False
        self._restart_hooks: list[Callable[[], None]] = []
        self.restarts = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> EnclaveIdentity:
        """Start the process if it is not running; returns the enclave's identity."""
        with self.lock:
            self._ensure_running()
            assert self._identity is not None
            return self._identity

    def add_restart_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` after every restart, before the call that triggered it."""
        with self.lock:
            self._restart_hooks.append(hook)

    @property
    def pid(self) -> int | None:
        """The enclave process id, or ``None`` when it is not running."""
        running = self._running
        return running.process.pid if running is not None else None

    @property
    def running(self) -> bool:
        """Whether a process is up (as far as the host knows)."""
        running = self._running
        return running is not None and running.process.poll() is None

    def close(self) -> None:
        """Ask the enclave to exit, then release the process and the region."""
        with self.lock:
            self._closed = True
            running, self._running = self._running, None
            if running is None:
                return
            try:
                write_frame(running.write_fd, ec.encode_call(ec.Shutdown()))
                read_frame(running.read_fd, timeout=5.0)
            except (ChannelClosed, ChannelTimeout):
                pass
            running.stop()

    def __enter__(self) -> Enclave:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_running(self) -> None:
        if self._closed:
            raise EnclaveError("the enclave was closed", reason="enclave_closed")
        if self._running is not None and self._running.process.poll() is None:
            return
        if self._running is not None:  # it died between calls
            self._fail("enclave process exited")
        running = self.launcher.launch()
        try:
            frame = read_frame(running.read_fd, self._start_timeout)
            identity = self._decode_identity(ec.decode_result(ec.IdentityResult, frame))
        except (ChannelClosed, ChannelTimeout):
            running.process.kill()
            running.stop()
            raise EnclaveError(
                f"the enclave process did not start: {running.log_tail(500).strip()}", reason="enclave_start_failed"
            ) from None
        except BaseException:
            running.process.kill()
            running.stop()
            raise
        if self._identity is not None and identity.public_keys != self._identity.public_keys:
            log.warning("enclave restarted with different keys (state directory changed?): devices must re-attest")
        self._running, self._identity = running, identity
        if self._started_once:
            self.restarts += 1
            log.warning("enclave process restarted (pid %d); restoring its rounds from sealed state",
                        running.process.pid)  # fmt: skip
            self._restoring = True
            try:
                for hook in self._restart_hooks:
                    hook()
            except QFlareError as exc:
                if self._running is not None:  # the process lives but its state is not what the host had
                    self._fail(f"restore failed: {exc.reason}")
                if isinstance(exc, EnclaveError) and exc.reason == "enclave_unavailable":
                    raise
                raise EnclaveError(
                    f"the restarted enclave could not restore its rounds ({exc.reason}): {exc.message}",
                    reason="enclave_restore_failed",
                ) from exc
            finally:
                self._restoring = False
        self._started_once = True

    def _fail(self, why: str) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.process.kill()
            running.stop()
            log.error("enclave unavailable (%s); stderr: %s", why, running.log_tail(500).strip())

    @staticmethod
    def _decode_identity(result: ec.IdentityResult) -> EnclaveIdentity:
        return EnclaveIdentity(
            measurement=result.measurement,
            signer=result.signer,
            isv_prod_id=result.isv_prod_id,
            isv_svn=result.isv_svn,
            debug=result.debug,
            simulated=result.simulated,
            platform=result.platform,
            public_keys=EnclavePublicKeys(
                kem=XWingPublicKey.from_bytes(result.kem_public_key),
                signing=VerifyKey.from_bytes(result.signing_public_key),
            ),
            dumpable=result.dumpable,
            modules=result.modules,
        )

    # -- the one way in -------------------------------------------------------------------------

    def _call(self, make: Callable[[RunningEnclave], ec.Ecall],
              output: Callable[[Any], ec.Region] | None = None) -> tuple[Any, bytes]:
        """Make one call; ``output`` names the answer's region whose bytes come back (``b""`` without one).

        The bytes are copied out of the shared region in the same hold of :attr:`lock` as the call:
        every answer is written to the same half of the region, so the next call (another thread's)
        writes over it. Doing it here means no caller can forget it."""
        with self.lock:
            if not self._restoring:
                self._ensure_running()
            running = self._running
            if running is None:
                raise EnclaveError("the enclave process is not running", reason="enclave_unavailable")
            call = make(running)
            try:
                write_frame(running.write_fd, ec.encode_call(call))
                frame = read_frame(running.read_fd, self._call_timeout)
            except ChannelTimeout:
                self._fail(f"{call.name} timed out")
                raise EnclaveError(
                    f"the enclave did not answer {call.name} in time", reason="enclave_unavailable"
                ) from None
            except ChannelClosed:
                self._fail(f"channel closed during {call.name}")
                raise EnclaveError(
                    f"the enclave process died during {call.name}", reason="enclave_unavailable"
                ) from None
            result = ec.decode_result(type(call).result, frame)
            return result, self._output(running, output(result)) if output is not None else b""

    def _simple(self, call: ec.Ecall) -> Any:
        return self._call(lambda _running: call)[0]

    def _with_input(self, data: bytes, build: Callable[[ec.Region], ec.Ecall],
                    output: Callable[[Any], ec.Region] | None = None) -> tuple[Any, bytes]:
        return self._call(lambda running: build(running.region.put(data, side="input")), output)

    @staticmethod
    def _output(running: RunningEnclave, region: ec.Region) -> bytes:
        """Copy an answer's bytes out of the shared region (:meth:`_call` does, under :attr:`lock`)."""
        return running.region.take(region, side="output")

    # -- identity and attestation ---------------------------------------------------------------

    def identity(self) -> EnclaveIdentity:
        """The enclave's identity and public keys (starts the process if needed)."""
        return self.start()

    def public_keys(self) -> EnclavePublicKeys:
        """The enclave's X-Wing and signing public keys."""
        return self.start().public_keys

    def quote(self, nonce: bytes) -> bytes:
        """A quote binding the public keys to ``nonce`` (16-64 bytes)."""
        result: ec.QuoteResult = self._simple(ec.GetQuote(nonce=bytes(nonce)))
        return result.quote

    def unsafe_debug_key_digest(self) -> str:
        """Debug enclaves only: hex SHA-256 over the private key seeds (tests use it)."""
        result: ec.DigestResult = self._simple(ec.UnsafeDebugKeyDigest())
        return result.sha256

    # -- requests -------------------------------------------------------------------------------

    def open_request(
        self, envelope: bytes, *, allowed_key_sources: Collection[str], extra_secret: bytes | None = None
    ) -> OpenedRequest:
        """Decrypt a small, pre-checked, non-update request envelope; its payload comes back."""
        sources = tuple(sorted(allowed_key_sources))
        result, payload = self._with_input(
            envelope,
            lambda r: ec.OpenRequest(envelope=r, allowed_key_sources=sources, extra_secret=extra_secret),
            lambda result: result.payload,
        )
        return OpenedRequest(
            request_hash=result.request_hash,
            device_id=result.device_id,
            method=result.method,
            path=result.path,
            round_id=result.round_id,
            payload=payload,
        )

    def seal_response(self, request_hash: bytes, payload: bytes) -> bytes:
        """Seal the one response to an opened request or validated update envelope."""
        _, sealed = self._with_input(
            payload, lambda r: ec.SealResponse(request_hash=bytes(request_hash), payload=r),
            lambda result: result.response,
        )
        return sealed

    def sign_task(self, task: RoundTask) -> bytes:
        """The enclave's signature over a round task (the round must be open on that base model)."""
        result: ec.SignatureResult = self._simple(
            ec.SignTask(round_id=task.round_id, model_sha256=task.model_sha256, deadline_ms=task.deadline_ms)
        )
        return result.signature

    def sign_note(self, text: bytes, proof: Sequence[bytes] = ()) -> bytes:
        """The enclave's signature lines over a checkpoint body for its own origin that extends the last one
        it signed (``proof``: the consistency proof from :meth:`ledger_head`'s size); refused otherwise."""
        result: ec.NoteSignaturesResult = self._simple(ec.SignNote(text=bytes(text), proof=tuple(proof)))
        return result.lines

    def ledger_head(self) -> tuple[int, bytes]:
        """``(size, root)`` of the last checkpoint the enclave signed (``(0, b"")``: none yet)."""
        result: ec.LedgerHeadResult = self._simple(ec.LedgerHead())
        return result.size, result.root

    def register_device(self, statement: bytes, signature: bytes) -> ec.RegistrationResult:
        """Hand the enclave an operator-signed device registration (it verifies the signature itself)."""
        result: ec.RegistrationResult = self._simple(
            ec.RegisterDevice(statement=bytes(statement), signature=bytes(signature))
        )
        return result

    def sign_initial_model(self, model: bytes) -> bytes:
        """The enclave's signature over the version-0 model (as the result of round 0)."""
        result, _ = self._with_input(model, lambda r: ec.SignInitialModel(model=r))
        return bytes(result.signature)

    # -- rounds ---------------------------------------------------------------------------------

    def _round_status(self, result: ec.RoundStatusResult) -> RoundStatus:
        return RoundStatus(
            round_id=result.round_id,
            count=result.count,
            total_examples=result.total_examples,
            included=frozenset(result.included),
            restored=result.restored,
        )

    def begin_round(self, round_id: int, base_model: bytes, spec: ModelSpec) -> RoundStatus:
        """Start aggregating ``round_id`` (forgetting any earlier state of it)."""
        spec_json = spec.to_json()
        result, _ = self._with_input(
            base_model, lambda r: ec.BeginRound(round_id=round_id, base_model=r, spec_json=spec_json)
        )
        return self._round_status(result)

    def restore_round(self, round_id: int, base_model: bytes, spec: ModelSpec) -> RoundStatus:
        """Start ``round_id`` from its sealed checkpoint when there is one."""
        spec_json = spec.to_json()
        result, _ = self._with_input(
            base_model, lambda r: ec.RestoreRound(round_id=round_id, base_model=r, spec_json=spec_json)
        )
        return self._round_status(result)

    def validate_update(
        self,
        round_id: int,
        data: bytes,
        *,
        kind: str,
        allowed_key_sources: Collection[str] = (),
        extra_secret: bytes | None = None,
        time_ms: int | None = None,
    ) -> UpdateReceipt:
        """Validate an update (``kind`` ``"envelope"`` or ``"plaintext"``); it stays inside, sealed copy out.

        ``time_ms`` (default: now) is the time the enclave writes into the update's signed ledger entry.
        """
        sources = tuple(sorted(allowed_key_sources))
        when = _now_ms() if time_ms is None else time_ms
        result, sealed = self._with_input(
            data,
            lambda r: ec.ValidateUpdate(
                round_id=round_id, data=r, kind=kind, allowed_key_sources=sources, extra_secret=extra_secret,
                time_ms=when,
            ),
            lambda result: result.sealed,
        )
        if result.stored_form == "envelope":
            stored = b"".join(stored_envelope(sealed, data))
        elif result.stored_form == "sealed":
            stored = sealed
        else:
            raise EnclaveError(f"unknown stored form {result.stored_form[:32]!r}", reason="enclave_protocol_error")
        return UpdateReceipt(
            update_id=result.update_id,
            request_hash=result.request_hash,
            num_examples=result.num_examples,
            train_loss=result.train_loss,
            sha256=result.sha256,
            size_bytes=result.size_bytes,
            stored=stored,
            norm=result.norm,
            ledger_entry=result.ledger_entry,
            dp_epsilon=result.dp_epsilon,
        )

    def accumulate(self, round_id: int, update_id: str) -> ec.AccumulatedResult:
        """Count a validated update held inside."""
        result: ec.AccumulatedResult = self._simple(ec.Accumulate(round_id=round_id, update_id=update_id))
        return result

    def replay(self, round_id: int, sealed: bytes) -> ec.AccumulatedResult:
        """Count a sealed update (skipped when already counted)."""
        result, _ = self._with_input(sealed, lambda r: ec.Replay(round_id=round_id, sealed=r))
        return result  # type: ignore[no-any-return]

    def finalize(self, round_id: int, *, time_ms: int | None = None) -> FinalizedRound:
        """Aggregate and sign; the round is forgotten inside (its checkpoint stays until :meth:`abort_round`).

        ``time_ms`` (default: now) goes into the round's signed ``aggregate_published`` entry."""
        when = _now_ms() if time_ms is None else time_ms
        result, model = self._call(lambda _running: ec.Finalize(round_id=round_id, time_ms=when),
                                   lambda result: result.model)
        return FinalizedRound(
            model=model,
            signature=result.signature,
            count=result.count,
            total_examples=result.total_examples,
            ledger_entry=result.ledger_entry,
            flagged=result.flagged,
        )

    def abort_round(self, round_id: int) -> None:
        """Forget the round and delete its checkpoint."""
        self._simple(ec.AbortRound(round_id=round_id))
