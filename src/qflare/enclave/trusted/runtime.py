"""The enclave's calls: what runs inside, behind the call table of :mod:`qflare.enclave.ecalls`.

The runtime holds the enclave's private keys (generated here, sealed at rest), the rounds being
aggregated, and the response keys of requests it decrypted. Nothing it returns contains a private key
or an update's plaintext: updates leave only sealed, and only small non-update request payloads are
handed back (:meth:`EnclaveRuntime.open_request`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from qflare.crypto import secret_access
from qflare.crypto.envelope import (
    Envelope,
    ResponseSealer,
    decrypt_envelope,
    parse_envelope,
    verify_envelope_signature,
)
from qflare.crypto.kem import SEED_SIZE as KEM_SEED_SIZE
from qflare.crypto.kem import XWingPrivateKey
from qflare.crypto.signing import SEED_SIZE as SIGN_SEED_SIZE
from qflare.crypto.signing import SigningContext, SigningKey
from qflare.enclave import ecalls as ec
from qflare.enclave.channel import SharedRegion
from qflare.enclave.config import EnclaveConfig
from qflare.enclave.quote import EnclavePublicKeys, check_nonce, report_data_for
from qflare.enclave.registry import DeviceRegistry, verify_registration
from qflare.enclave.sealing import SealingKey
from qflare.enclave.statements import RoundTask, model_statement, sign_task
from qflare.enclave.stored import (
    ENVELOPE_PURPOSE,
    UPDATE_PURPOSE,
    parse_stored,
    parse_update_header,
    stored_plaintext,
    update_header,
)
from qflare.enclave.trusted.platform import Platform, PlatformIdentity
from qflare.enclave.trusted.registry_store import SealedRegistryStore
from qflare.enclave.trusted.rounds import CHECKPOINT_PURPOSE, RoundState
from qflare.enclave.trusted.storage import MAX_STATE_FILE, read_file, remove_file, write_atomic
from qflare.errors import (
    AggregationError,
    CryptoError,
    DuplicateUpdate,
    EnclaveError,
    InvalidInput,
    InvalidSignature,
    LedgerIntegrityError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    QFlareError,
    ReplayDetected,
)
from qflare.fl.checks import ParsedUpdate, parse_update
from qflare.fl.privacy import DPFixedClipping, dp_from_params
from qflare.fl.serialize import dump_arrays, load_arrays, sha256_hex
from qflare.fl.spec import ModelSpec
from qflare.fl.strategies import get_strategy
from qflare.fl.strategies.server_opt import ServerOptStrategy
from qflare.ledger.checkpoint import parse_checkpoint
from qflare.ledger.entries import AggregatePublished, UpdateAccepted, encode_event, sign_entry
from qflare.ledger.merkle import verify_consistency
from qflare.ledger.note import HybridNoteSigner

__all__ = ["EnclaveRuntime", "RuntimeIdentity"]

_KEYS_PURPOSE: Final = "enclave-keys"
_CHAIN_PURPOSE: Final = "model-chain"
_OPTIMIZER_PURPOSE: Final = "server-optimizer"


def _optimizer_header(model_sha256: str, kind: str) -> bytes:
    """The public header of a sealed optimizer state: the model it belongs to and the optimizer."""
    return b"QFOS" + bytes.fromhex(model_sha256) + kind.encode("ascii")


@dataclass(frozen=True)
class RuntimeIdentity:
    """Who this enclave is: what its quotes state, plus its code measurement (for sealing).

    ``quoted`` equals the code measurement and SIGSTRUCT signer on the simulated platform, and
    MRENCLAVE / MRSIGNER on SGX.
    """

    code_measurement: bytes
    quoted: PlatformIdentity
    dumpable: bool
    modules: tuple[str, ...]


class EnclaveRuntime:
    """Executes calls inside the enclave.

    Parameters
    ----------
    platform:
        Sealing root and quotes.
    config:
        The measured configuration.
    identity:
        Measurement and signer established at boot.
    state_dir:
        Untrusted storage for sealed keys and checkpoints.
    region:
        The shared memory region for bulk inputs and outputs.
    """

    def __init__(
        self,
        *,
        platform: Platform,
        config: EnclaveConfig,
        identity: RuntimeIdentity,
        state_dir: Path,
        region: SharedRegion,
    ) -> None:
        self._platform = platform
        self._config = config
        self._identity = identity
        self._state_dir = state_dir
        self._region = region
        self._sealing = SealingKey(platform.sealing_root(), identity.code_measurement)
        self._tag = identity.code_measurement.hex()[:16]
        self._registry_store = SealedRegistryStore(self._sealing, state_dir, self._tag)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._kem, self._signer, created = self._load_or_create_keys()
        self._operator = config.operator_verify_key()
        # Central DP (config.privacy): one wrapper for the enclave's life (the adaptive clip moves with the
        # rounds); its noise is drawn here from the OS entropy, so the host never knows it.
        self._dp: DPFixedClipping | None = (
            dp_from_params(get_strategy(config.aggregation_rule, **config.aggregation_params), config.privacy)
            if config.privacy else None
        )
        # Sealed state written with the keys: the last model this enclave signed (the base every new
        # round must start from), the last log checkpoint it signed (the next must extend it) and the
        # device registry. A missing file next to existing keys means
        # the host deleted it (to roll the chain back, or to drop revocations): refuse, do not reset.
        self._state_missing = False
        if created:
            self._chain: dict[str, Any] = {"initial": None, "last": None, "last_round": None,
                                           "log_size": 0, "log_root": None, "optimizer": None}
            self._registry = DeviceRegistry()
            self._save_chain()
            self._registry_store.save(self._registry)
        else:
            self._chain, self._registry = self._load_state()
        self._public = EnclavePublicKeys(kem=self._kem.public_key(), signing=self._signer.public_key())
        # The transparency log's checkpoint signer: the same hybrid note lines as the host's
        # HybridNoteSigner, from the enclave's own composite key (sign_note).
        self._note_signer = HybridNoteSigner(config.ledger_origin, self._signer, secret_access.TOKEN)
        self._rounds: dict[int, RoundState] = {}
        self._optimizers: dict[int, ServerOptStrategy] = {}  # open rounds whose rule is a server optimizer
        self._sealers: OrderedDict[bytes, ResponseSealer] = OrderedDict()
        self.stopping = False
        # hashlib and AES-GCM drop the GIL on large inputs: hash (and seal) an update while parsing it,
        # and seal and write checkpoints while the next update is handled.
        self._hasher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="qflare-enclave-hash")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qflare-enclave-checkpoint")
        self._checkpoint_job: tuple[Future[None], tuple[str, ...]] | None = None
        self._handlers: dict[type[ec.Ecall], Callable[[Any], Any]] = {
            ec.GetIdentity: self.get_identity,
            ec.GetQuote: self.get_quote,
            ec.OpenRequest: self.open_request,
            ec.SealResponse: self.seal_response,
            ec.BeginRound: self.begin_round,
            ec.RestoreRound: self.restore_round,
            ec.ValidateUpdate: self.validate_update,
            ec.Accumulate: self.accumulate,
            ec.Replay: self.replay,
            ec.Finalize: self.finalize,
            ec.AbortRound: self.abort_round,
            ec.SignTask: self.sign_task,
            ec.RegisterDevice: self.register_device,
            ec.SignInitialModel: self.sign_initial_model,
            ec.SignNote: self.sign_note,
            ec.LedgerHead: self.ledger_head,
            ec.UnsafeDebugKeyDigest: self.unsafe_debug_key_digest,
            ec.Shutdown: self.shutdown,
        }

    # -- dispatch -------------------------------------------------------------------------------

    def handle(self, frame: bytes) -> bytes:
        """Decode one call, run it, and encode its result or refusal (never raises)."""
        try:
            call = ec.decode_call(frame)
            handler = self._handlers.get(type(call))
            if handler is None:
                raise EnclaveError(f"call {call.name} is not handled here", reason="ecall_refused")
            return ec.encode_result(handler(call))
        except QFlareError as exc:
            return ec.encode_error(_outbound(exc))
        except Exception as exc:  # a bug or hostile input we did not foresee: refuse, reveal nothing
            if self._config.debug:
                traceback.print_exc()
            else:
                print(f"qflare enclave: internal error ({type(exc).__name__})", file=sys.stderr)
            return ec.encode_error(EnclaveError("internal enclave error", reason="enclave_internal_error"))

    def shutdown(self, _: ec.Shutdown) -> ec.Empty:
        """Stop after answering (the process exits; sealed state stays on disk)."""
        self._collect_checkpoint(wait=True)
        self.stopping = True
        return ec.Empty()

    # -- keys -----------------------------------------------------------------------------------

    def _keys_path(self) -> Path:
        return self._state_dir / f"keys-{self._tag}.sealed"

    def _load_or_create_keys(self) -> tuple[XWingPrivateKey, SigningKey, bool]:
        path = self._keys_path()
        blob = read_file(path, max_size=65536)
        if blob is None:
            kem, signer = XWingPrivateKey.generate(), SigningKey.generate()
            seeds = kem.private_bytes(secret_access.TOKEN) + signer.private_bytes(secret_access.TOKEN)
            write_atomic(path, self._sealing.seal(seeds, purpose=_KEYS_PURPOSE))
            return kem, signer, True
        try:
            _, seeds = self._sealing.unseal(blob, purpose=_KEYS_PURPOSE)
        except CryptoError as exc:
            raise EnclaveError(f"sealed enclave keys do not open: {exc.message}", reason="unseal_failed") from None
        if len(seeds) != KEM_SEED_SIZE + SIGN_SEED_SIZE:
            raise EnclaveError("sealed enclave keys have the wrong size", reason="unseal_failed")
        return (
            XWingPrivateKey.from_seed(seeds[:KEM_SEED_SIZE], secret_access.TOKEN),
            SigningKey.from_seed(seeds[KEM_SEED_SIZE:], secret_access.TOKEN),
            False,
        )

    # -- sealed state: the model chain and the device registry ----------------------------------

    def _chain_path(self) -> Path:
        return self._state_dir / f"chain-{self._tag}.sealed"

    def _save_chain(self) -> None:
        data = json.dumps(self._chain, sort_keys=True, separators=(",", ":")).encode("ascii")
        write_atomic(self._chain_path(), self._sealing.seal(data, purpose=_CHAIN_PURPOSE))

    def _load_state(self) -> tuple[dict[str, Any], DeviceRegistry]:
        chain: dict[str, Any] = {"initial": None, "last": None, "last_round": None, "log_size": 0, "log_root": None,
                                 "optimizer": None}
        chain_blob = read_file(self._chain_path(), max_size=65536)
        registry = self._registry_store.load()
        if chain_blob is None or registry is None:
            self._state_missing = True
            return chain, DeviceRegistry()
        try:
            _, chain_data = self._sealing.unseal(chain_blob, purpose=_CHAIN_PURPOSE)
        except CryptoError as exc:
            raise EnclaveError(f"sealed enclave state does not open: {exc.message}", reason="unseal_failed") from None
        loaded = json.loads(chain_data)
        if isinstance(loaded, dict):
            loaded.setdefault("optimizer", None)  # sealed before server optimizer state was kept
        if not isinstance(loaded, dict) or set(loaded) != set(chain):
            raise EnclaveError("sealed model chain is malformed", reason="unseal_failed")
        return loaded, registry

    def _require_state(self) -> None:
        if self._state_missing:
            raise EnclaveError(
                "the enclave's sealed model chain or device registry is missing from its state directory",
                reason="enclave_state_missing",
            )

    def register_device(self, call: ec.RegisterDevice) -> ec.RegistrationResult:
        self._require_state()
        if self._operator is None:
            raise PermissionDenied("this enclave pins no operator key", reason="no_operator_key")
        registration = verify_registration(call.statement, call.signature, operator_key=self._operator)
        changed = self._registry.apply(registration)
        if changed:
            self._registry_store.append(self._registry, registration)
        return ec.RegistrationResult(
            device_id=registration.device_id, status=registration.status, sequence=registration.sequence,
            changed=changed, devices=len(self._registry),
        )

    def _check_device(self, env: Envelope) -> None:
        """Inside the enclave: the envelope's device is enrolled, not revoked, and signed it."""
        if self._operator is None:
            return  # measured choice: the host's device check is trusted
        self._require_state()
        registration = self._registry.get(env.device_id)
        if registration is None:
            raise PermissionDenied(
                f"device {env.device_id!r} is not in the enclave's registry", reason="enclave_unknown_device"
            )
        if registration.revoked:
            raise PermissionDenied(f"device {env.device_id!r} is revoked", reason="enclave_device_revoked")
        if env.key_source.value != registration.key_source:
            raise PermissionDenied(
                f"device {env.device_id!r} is enrolled for key source {registration.key_source}",
                reason="key_source_not_allowed",
            )
        try:
            verify_envelope_signature(env, registration.verify_key())
        except InvalidSignature:
            raise InvalidSignature(
                "the envelope is not signed by the device's enrolled key", reason="enclave_bad_signature"
            ) from None

    def _check_cap(self, device_id: str, num_examples: int) -> None:
        """The update claims no more examples than the device's enrolment allows (its registration)."""
        registration = self._registry.get(device_id) if self._operator is not None else None
        cap = registration.max_examples if registration is not None else None
        if cap is not None and num_examples > cap:
            raise InvalidInput(f"the update claims {num_examples} examples; device {device_id!r} is enrolled "
                               f"for at most {cap}", reason="num_examples_above_cap")

    def _check_base(self, base_sha256: str) -> None:
        """A round starts only from the model this enclave signed last (the first one it adopts)."""
        self._require_state()
        last = self._chain["last"]
        if last is None:
            # Nothing signed yet: this is the version-0 model; sign it now (sign_initial_model).
            self._chain = {**self._chain, "initial": base_sha256, "last": base_sha256, "last_round": 0}
            self._save_chain()
        elif base_sha256 != last:
            raise PermissionDenied(
                "the base model is not the model this enclave signed last", reason="base_model_not_signed"
            )

    def sign_initial_model(self, call: ec.SignInitialModel) -> ec.SignatureResult:
        sha = sha256_hex(self._input(call.model))
        self._require_state()
        if self._chain["last"] is not None and not (
            self._chain["last_round"] == 0 and self._chain["initial"] == sha
        ):
            raise PermissionDenied(
                "the enclave has already signed an initial model or a round's result",
                reason="initial_model_already_signed",
            )
        self._check_base(sha)
        return ec.SignatureResult(signature=self._signer.sign(model_statement(0, sha), SigningContext.GLOBAL_MODEL))

    # -- identity and attestation ---------------------------------------------------------------

    def get_identity(self, _: ec.GetIdentity) -> ec.IdentityResult:
        q = self._identity.quoted
        return ec.IdentityResult(
            measurement=q.measurement,
            signer=q.signer,
            isv_prod_id=q.isv_prod_id,
            isv_svn=q.isv_svn,
            debug=q.debug,
            simulated=self._platform.simulated,
            platform=self._platform.name,
            kem_public_key=self._public.kem.to_bytes(),
            signing_public_key=self._public.signing.to_bytes(),
            dumpable=self._identity.dumpable,
            modules=self._identity.modules,
        )

    def get_quote(self, call: ec.GetQuote) -> ec.QuoteResult:
        nonce = check_nonce(call.nonce)
        report_data = report_data_for(self._public, nonce)
        return ec.QuoteResult(quote=self._platform.quote(self._identity.quoted, report_data=report_data, nonce=nonce))

    def unsafe_debug_key_digest(self, _: ec.UnsafeDebugKeyDigest) -> ec.DigestResult:
        if not self._config.debug:
            raise EnclaveError("only a debug enclave answers debug calls", reason="not_a_debug_enclave")
        seeds = self._kem.private_bytes(secret_access.TOKEN) + self._signer.private_bytes(secret_access.TOKEN)
        return ec.DigestResult(sha256=hashlib.sha256(seeds).hexdigest())

    # -- requests -------------------------------------------------------------------------------

    def _input(self, region: ec.Region) -> bytes:
        if region.length > self._config.max_payload_bytes:
            raise PayloadTooLarge(f"{region.length} bytes exceed the enclave limit of {self._config.max_payload_bytes}")
        # One private copy before anything looks at the bytes: the host can rewrite the region.
        return self._region.take(region, side="input")

    def _permitted(self, allowed: tuple[str, ...], env: Envelope) -> set[str]:
        permitted = set(allowed) & set(self._config.allowed_key_sources)
        if env.key_source.value not in permitted:
            raise PermissionDenied(
                f"key source {env.key_source.value} is not allowed by the enclave", reason="key_source_not_allowed"
            )
        return permitted

    def _decrypt(self, env: Envelope, allowed: tuple[str, ...], extra_secret: bytes | None) -> bytes:
        """Decrypt a request and keep its response key for :meth:`seal_response`."""
        permitted = self._permitted(allowed, env)
        payload, sealer = decrypt_envelope(env, self._kem, allowed_key_sources=permitted, extra_secret=extra_secret)
        self._sealers[env.header_hash] = sealer
        while len(self._sealers) > self._config.max_open_requests:
            self._sealers.popitem(last=False)
        return payload

    def open_request(self, call: ec.OpenRequest) -> ec.OpenedRequestResult:
        data = self._input(call.envelope)
        env = parse_envelope(data, max_size=self._config.max_payload_bytes)
        if self._config.update_path_round(env.path) is not None:
            raise PermissionDenied("an update's payload never leaves the enclave", reason="update_payload_stays_inside")
        payload = self._decrypt(env, call.allowed_key_sources, call.extra_secret)
        if len(payload) > self._config.max_request_payload_bytes:
            self._sealers.pop(env.header_hash, None)
            raise PayloadTooLarge("request payload too large to leave the enclave", reason="payload_too_large")
        return ec.OpenedRequestResult(
            request_hash=env.header_hash,
            device_id=env.device_id,
            method=env.method,
            path=env.path,
            round_id=None if env.round_id is None else str(env.round_id),
            payload=self._region.put(payload, side="output"),
        )

    def seal_response(self, call: ec.SealResponse) -> ec.SealedResponseResult:
        sealer = self._sealers.pop(call.request_hash, None)
        if sealer is None:
            raise NotFound(
                "no open request with this hash (answered, expired, or never opened)", reason="unknown_request"
            )
        response = sealer.seal(self._input(call.payload))
        return ec.SealedResponseResult(response=self._region.put(response, side="output"))

    # -- rounds ---------------------------------------------------------------------------------

    def _checkpoint_path(self, round_id: int) -> Path:
        return self._state_dir / f"round-{round_id}-{self._tag}.ckpt"

    def _new_round(self, call: ec.BeginRound | ec.RestoreRound) -> RoundState:
        base_model = self._input(call.base_model)
        spec = ModelSpec.from_json(call.spec_json)
        strategy = get_strategy(self._config.aggregation_rule, **self._config.aggregation_params)
        optimizer = strategy if isinstance(strategy, ServerOptStrategy) else None
        if self._dp is not None:
            self._dp.strategy = strategy  # a fresh rule per round, as without DP
            strategy = self._dp
        base_sha256 = sha256_hex(base_model)
        # Always kept: every update's step norm goes into its signed ledger entry.
        base = load_arrays(base_model, spec)[0]
        self._check_base(base_sha256)
        if optimizer is not None:
            self._load_optimizer(optimizer, base_sha256)
            self._optimizers[call.round_id] = optimizer
        return RoundState(round_id=call.round_id, spec=spec, base_sha256=base_sha256, base=base,
                          strategy=strategy)

    # -- server optimizer state (FedAvgM momentum, FedAdam moments): sealed with the model it led to ----

    def _optimizer_path(self, model_sha256: str) -> Path:
        return self._state_dir / f"optimizer-{self._tag}-{model_sha256[:32]}.sealed"

    def _load_optimizer(self, optimizer: ServerOptStrategy, base_sha256: str) -> None:
        """Resume the optimizer state the round's base model was produced with (none: a fresh start).

        The sealed chain names the model the last sealed state belongs to, so a state file the host
        deleted or swapped for an older one is refused, never silently replaced by a fresh start.
        """
        if self._chain.get("optimizer") != base_sha256:
            return  # the base was not made by a server optimizer step (the first round, or another rule)
        blob = read_file(self._optimizer_path(base_sha256), max_size=MAX_STATE_FILE)
        if blob is None:
            raise EnclaveError("the server optimizer state of the base model is missing from the state directory",
                               reason="enclave_state_missing")
        header, plaintext = self._sealing.unseal(blob, purpose=_OPTIMIZER_PURPOSE)
        if header != _optimizer_header(base_sha256, optimizer.optimizer):
            raise EnclaveError("the sealed optimizer state belongs to another model or optimizer",
                               reason="enclave_state_missing")
        optimizer.from_state(load_arrays(plaintext)[0])

    def _save_optimizer(self, round_id: int, model_sha256: str) -> None:
        """Seal the optimizer state after the step that made ``model_sha256`` (before the chain names it)."""
        optimizer = self._optimizers.get(round_id)
        if optimizer is not None:
            write_atomic(self._optimizer_path(model_sha256), *self._sealing.seal_parts(
                dump_arrays(optimizer.state()), purpose=_OPTIMIZER_PURPOSE,
                header=_optimizer_header(model_sha256, optimizer.optimizer)))

    def _drop_optimizers(self, *, keep: str) -> None:
        """Remove sealed optimizer states of older models (the chain has moved past them)."""
        for path in self._state_dir.glob(f"optimizer-{self._tag}-*.sealed"):
            if path != self._optimizer_path(keep):
                remove_file(path)

    def _status(self, state: RoundState, *, restored: bool) -> ec.RoundStatusResult:
        return ec.RoundStatusResult(
            round_id=state.round_id,
            count=state.acc.count,
            total_examples=state.acc.total_examples,
            included=tuple(state.included),
            restored=restored,
        )

    def begin_round(self, call: ec.BeginRound) -> ec.RoundStatusResult:
        self._collect_checkpoint(wait=True)
        state = self._new_round(call)
        remove_file(self._checkpoint_path(call.round_id))
        self._rounds[call.round_id] = state
        return self._status(state, restored=False)

    def restore_round(self, call: ec.RestoreRound) -> ec.RoundStatusResult:
        self._collect_checkpoint(wait=True)
        state = self._new_round(call)
        blob = read_file(self._checkpoint_path(call.round_id), max_size=MAX_STATE_FILE)
        if blob is not None:
            header, plaintext = self._sealing.unseal(blob, purpose=CHECKPOINT_PURPOSE)
            state.restore(header, plaintext)
        self._rounds[call.round_id] = state
        return self._status(state, restored=blob is not None)

    def _round(self, round_id: int) -> RoundState:
        state = self._rounds.get(round_id)
        if state is None:
            raise NotFound(f"round {round_id} is not being aggregated", reason="unknown_round")
        return state

    def _parse(self, state: RoundState, payload: bytes) -> ParsedUpdate:
        return parse_update(payload, state.spec, max_norm=self._config.max_update_norm, reference=state.base)

    def _update_envelope(self, data: bytes, round_id: int) -> Envelope:
        env = parse_envelope(data, max_size=self._config.max_payload_bytes)
        if self._config.update_path_round(env.path) != round_id or env.method != "POST":
            raise InvalidInput(f"the envelope is not an update for round {round_id}", reason="not_an_update")
        if env.round_id != round_id:
            raise InvalidInput(f"the envelope is signed for round {env.round_id!r}", reason="round_mismatch")
        return env

    def validate_update(self, call: ec.ValidateUpdate) -> ec.UpdateReceiptResult:
        state = self._round(call.round_id)
        data = self._input(call.data)
        update_id = os.urandom(16).hex()
        header = update_header(call.round_id, update_id)
        device_id: str | None = None
        if call.kind == "envelope":
            env = self._update_envelope(data, call.round_id)
            self._check_device(env)
            if state.envelope_seen(env.header_hash):
                raise ReplayDetected("this update envelope was seen before in this round",
                                     reason="enclave_replayed_envelope")
            if state.has_device(env.device_id):
                raise DuplicateUpdate(f"an update of device {env.device_id!r} is already counted in this round",
                                      reason="enclave_duplicate_device")
            device_id = env.device_id
            payload = self._decrypt(env, call.allowed_key_sources, call.extra_secret)
            request_hash: bytes | None = env.header_hash
            digest = self._hasher.submit(sha256_hex, payload)
            update = self._parse(state, payload)
            self._check_cap(env.device_id, update.num_examples)
            secret = b"" if call.extra_secret is None else b"\x01" + call.extra_secret
            stored: tuple[bytes, ...] = (
                self._sealing.seal(env.header_hash + secret, purpose=ENVELOPE_PURPOSE, header=header),
            )
        elif call.kind == "plaintext":
            if self._operator is not None:
                raise PermissionDenied(
                    "this enclave checks device signatures: send the update envelope", reason="envelope_required"
                )
            payload, request_hash = data, None
            digest = self._hasher.submit(sha256_hex, payload)
            sealing = self._hasher.submit(self._sealing.seal_parts, payload, purpose=UPDATE_PURPOSE, header=header)
            update = self._parse(state, payload)
            stored = stored_plaintext(*sealing.result())
        else:
            raise EnclaveError(f"unknown update kind {call.kind[:32]!r}", reason="ecall_refused")
        state.hold(update_id, update, limit=self._config.max_pending_updates, device_id=device_id)
        if request_hash is not None:
            state.seen_envelopes.add(request_hash)
        sha256 = digest.result()
        entry = None
        if device_id is not None:
            # The fact is known here: the enclave checked the device's signature, opened and validated the
            # update, and measured its norm; the host can only append these bytes, not write them.
            entry = encode_event(sign_entry(UpdateAccepted(
                device_id=device_id, round_id=call.round_id, envelope_sha256=sha256,
                sample_count=update.num_examples, update_norm=float(update.norm or 0.0),
                verdict="accepted", time_ms=call.time_ms,
            ), self._signer))
        return ec.UpdateReceiptResult(
            stored_form="envelope" if request_hash is not None else "sealed",
            update_id=update_id,
            request_hash=request_hash,
            num_examples=update.num_examples,
            train_loss=update.train_loss,
            sha256=sha256,
            size_bytes=len(payload),
            sealed=self._region.put(*stored, side="output"),
            norm=update.norm,
            ledger_entry=entry,
            dp_epsilon=update.dp_epsilon,
        )

    def _unstore(self, data: bytes, round_id: int) -> tuple[str, bytes, Envelope | None]:
        """``(update_id, plaintext update, its envelope)`` from a stored update, for ``round_id``."""
        parts = parse_stored(data)
        header, sealed = self._sealing.unseal(parts.sealed, purpose=parts.purpose)
        stored_round, update_id = parse_update_header(header)
        if stored_round != round_id:
            raise InvalidInput(f"stored update belongs to round {stored_round}", reason="round_mismatch")
        if parts.envelope is None:
            return update_id, sealed, None
        env = self._update_envelope(parts.envelope, round_id)
        if sealed[:32] != env.header_hash:
            raise CryptoError("stored update does not match its envelope", reason="unseal_failed")
        secret = sealed[33:] if sealed[32:33] == b"\x01" else None
        permitted = self._permitted(tuple(self._config.allowed_key_sources), env)
        payload, _ = decrypt_envelope(env, self._kem, allowed_key_sources=permitted, extra_secret=secret)
        return update_id, payload, env

    def _write_checkpoint(self, path: Path, header: bytes, plaintext: bytes) -> None:
        write_atomic(path, *self._sealing.seal_parts(plaintext, purpose=CHECKPOINT_PURPOSE, header=header))

    def _collect_checkpoint(self, *, wait: bool) -> tuple[str, ...]:
        """Ids covered by a background checkpoint that has finished (waiting for it when ``wait``)."""
        job = self._checkpoint_job
        if job is None or (not wait and not job[0].done()):
            return ()
        self._checkpoint_job = None
        future, ids = job
        try:
            future.result()
        except OSError as exc:  # the host's disk: the ids simply stay uncovered
            print(f"qflare enclave: checkpoint not written: {exc.strerror}", file=sys.stderr)
            return ()
        return ids

    def _counted(self, state: RoundState, *, skipped: bool) -> ec.AccumulatedResult:
        covered = self._collect_checkpoint(wait=False)
        if state.since_checkpoint >= self._config.checkpoint_every and self._checkpoint_job is None:
            # Snapshot here (one copy of the sums); seal and write on the worker thread.
            header, plaintext = state.checkpoint()
            ids = tuple(state.included[state.checkpointed_count :])
            state.checkpointed_count = len(state.included)
            future = self._writer.submit(
                self._write_checkpoint, self._checkpoint_path(state.round_id), header, plaintext
            )
            self._checkpoint_job = (future, ids)
        return ec.AccumulatedResult(
            count=state.acc.count, total_examples=state.acc.total_examples, skipped=skipped, covered=covered
        )

    def accumulate(self, call: ec.Accumulate) -> ec.AccumulatedResult:
        state = self._round(call.round_id)
        if state.counted(call.update_id):
            return self._counted(state, skipped=True)
        update = state.pending.get(call.update_id)
        if update is None:
            raise EnclaveError("update not held here: replay its sealed copy", reason="unknown_update")
        state.add(call.update_id, update, state.pending_device(call.update_id))
        return self._counted(state, skipped=False)

    def replay(self, call: ec.Replay) -> ec.AccumulatedResult:
        state = self._round(call.round_id)
        update_id, payload, env = self._unstore(self._input(call.sealed), call.round_id)
        if env is not None:
            state.seen_envelopes.add(env.header_hash)
        if state.counted(update_id):
            return self._counted(state, skipped=True)
        parsed = self._parse(state, payload)
        if env is not None:
            self._check_cap(env.device_id, parsed.num_examples)
        state.add(update_id, parsed, None if env is None else env.device_id)
        return self._counted(state, skipped=False)

    def finalize(self, call: ec.Finalize) -> ec.FinalizedResult:
        state = self._round(call.round_id)
        if state.acc.count == 0:
            raise AggregationError(f"round {call.round_id} has no updates", reason="no_updates")
        model = dump_arrays(state.acc.result(), {"round_id": str(call.round_id)})
        outcome = getattr(state.acc, "last_outcome", None)  # the rule's verdicts (robust rules only)
        flagged = tuple(sorted({d for i in (outcome.flagged if outcome is not None else ())
                                if (d := state.participants[i][0]) is not None}))
        model_sha256 = sha256_hex(model)  # once: the signature, the ledger entry and the chain name it
        signature = self._signer.sign(model_statement(call.round_id, model_sha256), SigningContext.GLOBAL_MODEL)
        entry = self._aggregate_entry(state, model_sha256, call.time_ms)
        self._save_optimizer(call.round_id, model_sha256)
        # The chain moves on before the model leaves: the next round must start from this model.
        self._chain = {**self._chain, "last": model_sha256, "last_round": call.round_id,
                       "optimizer": model_sha256 if call.round_id in self._optimizers else None}
        self._save_chain()
        self._drop_optimizers(keep=model_sha256)
        self._optimizers.pop(call.round_id, None)
        # The checkpoint stays until abort_round: if this answer is lost, the round can be restored.
        del self._rounds[call.round_id]
        return ec.FinalizedResult(
            model=self._region.put(model, side="output"),
            signature=signature,
            count=state.acc.count,
            total_examples=state.acc.total_examples,
            ledger_entry=entry,
            flagged=flagged,
        )

    def _aggregate_entry(self, state: RoundState, model_sha256: str, time_ms: int) -> bytes | None:
        """The signed ``aggregate_published`` entry: the model it just made, the measured rule and its
        parameters, and every counted update's device with its sample count (``None`` if one was a
        plaintext update, whose device the enclave does not know)."""
        if any(d is None for d, _ in state.participants):
            return None
        params: dict[str, str | int] = {"weighting": "num_examples"}
        for k, v in sorted(self._config.aggregation_params.items()):
            params[str(k)] = v if isinstance(v, int) and not isinstance(v, bool) else (
                repr(float(v)) if isinstance(v, float) else str(v))
        if self._config.privacy:
            params["privacy"] = str(self._config.privacy.get("mode", "central"))
        return encode_event(sign_entry(AggregatePublished(
            round_id=state.round_id, model_sha256=model_sha256, rule=self._config.aggregation_rule,
            parameters=params, participants=tuple((str(d), float(n)) for d, n in state.participants),
            time_ms=time_ms,
        ), self._signer))

    def abort_round(self, call: ec.AbortRound) -> ec.Empty:
        self._collect_checkpoint(wait=True)
        self._rounds.pop(call.round_id, None)
        self._optimizers.pop(call.round_id, None)
        remove_file(self._checkpoint_path(call.round_id))
        return ec.Empty()

    def sign_task(self, call: ec.SignTask) -> ec.SignatureResult:
        state = self._round(call.round_id)
        if state.base_sha256 != call.model_sha256:
            raise PermissionDenied(
                "the task names another model than the round's base model", reason="task_model_mismatch"
            )
        task = RoundTask(round_id=call.round_id, model_sha256=call.model_sha256, deadline_at=call.deadline_ms / 1000)
        if task.deadline_ms != call.deadline_ms:
            raise InvalidInput("deadline_ms is out of range", reason="bad_deadline")
        return ec.SignatureResult(signature=sign_task(task, self._signer))

    def sign_note(self, call: ec.SignNote) -> ec.NoteSignaturesResult:
        """Sign a checkpoint body for this enclave's log: a canonical C2SP tlog-checkpoint of the measured
        origin, without extension lines (so no other text can be signed with the log key).

        The enclave does not hold the tree, but it keeps (sealed, with the model chain) the size and
        root of the last checkpoint it signed, and signs a new one only if the host proves it extends
        that one (an RFC 9162 consistency proof): so its log key never signs a rolled-back or forked
        log, and a host that rewrote entries the enclave already checkpointed cannot get the rewrite
        signed. Re-signing the same checkpoint is allowed.
        """
        cp = parse_checkpoint(call.text, origin=self._config.ledger_origin)  # malformed_checkpoint / origin_mismatch
        if cp.extensions:
            raise PermissionDenied("the enclave signs checkpoints without extension lines",
                                   reason="checkpoint_extensions_refused")
        self._require_state()
        size, root = self._head()
        if cp.size < size:
            raise LedgerIntegrityError(f"checkpoint size {cp.size} is below the size {size} this enclave signed",
                                       reason="checkpoint_rollback")
        if cp.size == size and size > 0 and cp.root != root:
            raise LedgerIntegrityError(f"another root for size {size} than the one this enclave signed",
                                       reason="checkpoint_fork")
        if size > 0 and cp.size > size:
            try:
                verify_consistency(size, cp.size, list(call.proof), root, cp.root)
            except LedgerIntegrityError as exc:
                raise LedgerIntegrityError(
                    f"checkpoint {cp.size} does not extend the checkpoint {size} this enclave signed ({exc.reason})",
                    reason="inconsistent_checkpoint") from None
        if (cp.size, cp.root) != (size, root):
            # Sealed before the signature leaves: a lost answer can be re-signed, never rolled back.
            self._chain = {**self._chain, "log_size": cp.size, "log_root": cp.root.hex()}
            self._save_chain()
        lines = b"".join(sig.line() for sig in self._note_signer.sign_note(cp.to_body()))
        return ec.NoteSignaturesResult(lines=lines)

    def _head(self) -> tuple[int, bytes]:
        size = self._chain.get("log_size") or 0
        root = self._chain.get("log_root")
        return int(size), bytes.fromhex(root) if isinstance(root, str) else b""

    def ledger_head(self, _: ec.LedgerHead) -> ec.LedgerHeadResult:
        self._require_state()
        size, root = self._head()
        return ec.LedgerHeadResult(size=size, root=root)


def _outbound(exc: QFlareError) -> QFlareError:
    """The refusal as it may leave the enclave: the norm of a rejected update stays inside."""
    if exc.reason == "norm_exceeded":
        return type(exc)("update L2 norm exceeds the enclave's bound", reason=exc.reason)
    return exc
