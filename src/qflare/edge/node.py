"""The edge node loop: poll for a task, train on local data, upload, repeat; back off when the server is away."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qflare.config import DeviceConfig, TrainConfig
from qflare.edge.attestation import AttestedEnclave
from qflare.edge.audit import LedgerAuditor
from qflare.edge.client import ServerUnavailable
from qflare.enclave.statements import RoundTask, verify_model_signature, verify_task_signature
from qflare.errors import (
    AttestationError,
    AuthenticationError,
    ConfigError,
    Conflict,
    DecryptionFailed,
    DuplicateUpdate,
    InvalidInput,
    InvalidSignature,
    LedgerIntegrityError,
    NotFound,
    PermissionDenied,
    QFlareError,
    QKDError,
    RoundClosed,
    UpdateRejected,
)
from qflare.fl.he import is_ckks_blob
from qflare.fl.serialize import ModelSpec, dump_arrays, load_arrays
from qflare.fl.tasks import get_task
from qflare.fl.train import get_arrays, set_arrays, train_local

log = logging.getLogger("qflare.edge")


class Client(Protocol):
    enclave: AttestedEnclave | None

    @property
    def attestation_required(self) -> bool: ...

    def attest(self) -> AttestedEnclave: ...

    def task(self, wait: float = 0.0) -> dict[str, Any]: ...

    def download_model(self, version: int, expected_sha256: str) -> bytes: ...

    def upload_update(self, round_id: int, blob: bytes, base_version: int | None = None) -> dict[str, Any]: ...

    def report_metrics(self, report: dict[str, Any]) -> dict[str, Any]: ...


@dataclass
class NodeStats:
    rounds_trained: int = 0
    uploads_accepted: int = 0
    uploads_refused: int = 0
    retries: int = 0
    refusals: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log at the end of ``qflare edge``."""
        refused = f" ({', '.join(sorted(set(self.refusals)))})" if self.refusals else ""
        return (f"trained {self.rounds_trained} rounds, {self.uploads_accepted} updates accepted, "
                f"{self.uploads_refused} refused{refused}, {self.retries} retries")


class GaveUp(QFlareError):
    default_reason = "gave_up"


class EdgeNode:
    """One edge device taking part in federated training.

    Parameters
    ----------
    config:
        The device's configuration (identity, server, local data).
    client:
        The protocol client (see :class:`qflare.edge.client.DeviceClient`).
    sleep, clock:
        Injected for tests.
    """

    def __init__(
        self,
        config: DeviceConfig,
        client: Client,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        auditor: LedgerAuditor | None = None,
        privacy_state: Path | None = None,
        he_context: Any = None,
    ) -> None:
        import torch

        torch.set_num_threads(config.torch_threads)
        self.config = config
        self.client = client
        self.sleep = sleep
        self.clock = clock
        self.auditor = auditor  # docs/ledger.md, "Devices as auditors"
        self.stats = NodeStats()
        self._waiting_for: str | None = None  # the last wait reason logged (logged once, not at every poll)
        self._open_receipt: tuple[int, int] | None = None  # (round, ledger index) of the last accepted upload
        self._deadline_at: float | None = None  # the current round's deadline, server (wall-clock) time
        d = config.data
        self.task = get_task(d.task)
        self.dataset = self.task.client_dataset(
            d.partition_index, d.num_partitions, partition=d.partition, alpha=d.alpha, seed=d.seed,
            csv_path=d.csv.source(d.csv_path) if d.csv_path else None,
        )
        self.personalizer = self._personalizer(config)
        self.model = self.task.build_model()
        self.spec = ModelSpec.from_model(self.model)
        self._rng = random.Random(config.device_id)
        self.poisoner = self._simulation_poisoner(config)
        self.local_dp: Any = None  # qflare.fl.local_dp.LocalDP once a task asks for training.dp
        self.privacy_state = privacy_state  # local DP: the steps spent, kept across restarts
        self._local_dp_config: Any = None
        # CKKS (docs/privacy.md): the operator's secret context; updates leave encrypted, the aggregate is decrypted.
        self.he_context = he_context
        self._costs: dict[str, Any] = {}  # this round's bytes on the wire and times (cost_log)
        # Async rounds: (task, base arrays) of the last training, to rebase a stale update before it is sent.
        self._trained_on: tuple[dict[str, Any], dict[str, Any]] | None = None
        self._last_upload: bytes | None = None  # the bytes last sent (a rebased update differs from the trained one)
        self._last_train_config: TrainConfig | None = None

    def _personalizer(self, config: DeviceConfig) -> Any:
        """``DeviceConfig.personalize``: hold out part of the device's own data and personalise on the rest."""
        p = config.personalize
        if p is None:
            return None
        from qflare.fl.personalize import DevicePersonalizer, device_split

        d = config.data
        if d.csv_path or config.local_dp is not None:
            raise ConfigError("personalize: not with a CSV data source or local DP (held-out split and Ditto's "
                              "second training are not defined for them)", reason="invalid_config")
        self.dataset, held = device_split(self.task, d.partition_index, d.num_partitions, partition=d.partition,
                                          alpha=d.alpha, seed=d.seed)
        self._reported = False
        return DevicePersonalizer(self.task, p.method, self.dataset, held, epochs=p.epochs,
                                  ditto_lambda=p.ditto_lambda)

    def report_personalized(self, task: dict[str, Any]) -> dict[str, Any] | None:
        """Once the run is done: evaluate the final global and the personalised model on this device's
        held-out data and report both (signed, ``POST /v1/device/metrics``). Once per run."""
        if self.personalizer is None or self._reported or task.get("model_version") is None:
            return None
        blob = self.client.download_model(int(task["model_version"]), str(task["model_sha256"]))
        self.verify_model(task, blob)
        final, _ = load_arrays(blob, self.spec)
        tc = self._last_train_config or self.task.default_train_config()
        global_metric, personal = self.personalizer.evaluate(self.model, final, tc, self._rng.randrange(2**31))
        report = {"method": self.personalizer.method, "metric": self.task.metric, "global": global_metric,
                  "personalized": personal, "num_examples": len(self.personalizer.held_out)}
        answer = self.client.report_metrics(report)
        self._reported = True
        log.info("%s: held-out %s of the global model %.4g, personalised (%s) %.4g: reported",
                 self.config.device_id, self.task.metric, global_metric, self.personalizer.method, personal)
        return answer

    def _simulation_poisoner(self, config: DeviceConfig) -> Any:
        """DANGER: ``simulation_attack`` turns this device into a poisoner; refused without QFLARE_SIMULATION=1."""
        if config.simulation_attack is None:
            return None
        from torch.utils.data import TensorDataset

        from qflare.fl.poisoning import Poisoner, require_simulation

        require_simulation()
        sa = config.simulation_attack
        poisoner = Poisoner(sa.kind, sa.params, num_classes=getattr(self.task, "num_classes", None))
        if sa.kind == "label-flip" and isinstance(self.dataset, TensorDataset):
            import torch

            *inputs, labels = self.dataset.tensors
            flipped = torch.from_numpy(poisoner.poison_labels(labels.numpy()))
            self.dataset = TensorDataset(*inputs, flipped)
        log.warning("%s: SIMULATION ATTACK %s %s: this device poisons its updates", config.device_id, sa.kind,
                    sa.params)
        return poisoner

    def _poison(self, update: dict[str, Any], num_examples: int, base: dict[str, Any], tc: TrainConfig,
                seed: int) -> tuple[dict[str, Any], int]:
        import numpy as np

        honest: list[dict[str, Any]] = []
        if self.poisoner.colluding:
            # No view of the other devices' updates: estimate them by training honest models on bootstrap
            # resamples of the local data (see qflare.fl.poisoning).
            from torch.utils.data import Subset

            gen = np.random.default_rng(seed)
            honest.append(update)
            for _ in range(self.poisoner.estimates):
                idx = gen.integers(0, len(self.dataset), size=len(self.dataset))  # type: ignore[arg-type]
                set_arrays(self.model, base)
                train_local(self.model, Subset(self.dataset, idx.tolist()), epochs=tc.epochs,
                            batch_size=tc.batch_size, lr=tc.lr, optimizer=tc.optimizer, momentum=tc.momentum,
                            weight_decay=tc.weight_decay, seed=int(gen.integers(2**31)))
                honest.append(get_arrays(self.model))
        return self.poisoner.poison_update(  # type: ignore[no-any-return]
            update, num_examples, reference=base, rng=np.random.default_rng(seed), honest=honest
        )

    def verify_task(self, task: dict[str, Any]) -> None:
        """With an attested enclave, the task must carry the enclave's signature over (round, model hash, deadline)."""
        enclave = self.client.enclave
        if enclave is None:
            if self.client.attestation_required:
                raise AttestationError("refusing to train: the server's enclave is not attested", reason="not_attested")
            return
        sig = task.get("task_signature")
        if not sig:
            raise AttestationError("refusing to train: the task is not signed by the enclave", reason="unsigned_task")
        rt = RoundTask(round_id=int(task["round_id"]), model_sha256=str(task["model_sha256"]),
                       deadline_at=float(task["deadline_at"]))
        verify_task_signature(rt, base64.b64decode(sig), enclave_key=enclave.signing)

    def verify_model(self, task: dict[str, Any], blob: bytes) -> None:
        """A model produced by a round must carry the enclave's signature (version 0 is bound by the task)."""
        enclave = self.client.enclave
        if enclave is None or int(task["model_version"]) == 0:
            return
        sig, rid = task.get("model_signature"), task.get("model_round_id")
        if not sig or rid is None:
            raise AttestationError("refusing to load a global model without the enclave's signature",
                                   reason="unsigned_model")
        verify_model_signature(blob, base64.b64decode(sig), enclave_key=enclave.signing, round_id=int(rid))

    def _privacy(self, tc: TrainConfig) -> Any:
        """The device's DP-SGD state (one accountant across rounds) for its own ``local_dp`` if configured (the
        server's task cannot turn it off or weaken it), else the task's ``training.dp``; ``None``: no local DP."""
        wanted = self.config.local_dp or tc.dp
        if wanted is None:
            return None
        if self.local_dp is None or wanted != self._local_dp_config:
            from qflare.fl.local_dp import LocalDP

            if self.local_dp is not None:
                # Keep the steps already spent: a changed plan does not reset what this device's data revealed.
                log.warning("%s: training.dp changed; the privacy already spent (epsilon %.3g) stays counted",
                            self.config.device_id, self.local_dp.epsilon)
            fresh = LocalDP.from_config(wanted, num_examples=len(self.dataset),  # type: ignore[arg-type]
                                        batch_size=tc.batch_size, epochs=tc.epochs)
            if self.local_dp is not None:
                fresh.inherit(self.local_dp)
            elif self.privacy_state is not None and self.privacy_state.exists():
                fresh.add_spent(self._read_privacy_state(self.privacy_state))
            self.local_dp, self._local_dp_config = fresh, wanted
            log.info("%s: local DP (DP-SGD): noise_multiplier %.4g, max_grad_norm %g, budget epsilon %s at delta %g",
                     self.config.device_id, fresh.noise_multiplier, fresh.max_grad_norm, fresh.budget, fresh.delta)
        return self.local_dp

    @staticmethod
    def _read_privacy_state(path: Path) -> Any:
        # Unreadable spend is never taken as zero: the device refuses to train instead.
        try:
            return json.loads(path.read_text(encoding="utf-8"))["history"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: local DP state unreadable ({exc}); not training on an unknown privacy spend",
                              reason="bad_privacy_state") from None

    def _save_privacy_state(self, dp: Any) -> None:
        if self.privacy_state is None:
            return
        tmp = self.privacy_state.with_name(self.privacy_state.name + ".tmp")
        tmp.write_text(json.dumps({"device_id": self.config.device_id, "history": dp.spent()}), encoding="utf-8")
        tmp.replace(self.privacy_state)

    def train_round(self, task: dict[str, Any]) -> bytes | None:
        """Load the announced global model (verified), train locally, and return the update's bytes.

        ``None``: the device's local-DP budget does not allow another round (it does not train).
        """
        round_id = int(task["round_id"])
        tc = TrainConfig.model_validate(task.get("train_config") or {})
        dp = self._privacy(tc)
        if dp is not None and dp.would_exceed(num_examples=len(self.dataset),  # type: ignore[arg-type]
                                              batch_size=tc.batch_size, epochs=tc.epochs):
            log.warning("%s: round %d not trained: another round would exceed the local privacy budget "
                        "(epsilon %.4g spent of %s at delta %g)", self.config.device_id, round_id, dp.epsilon,
                        dp.budget, dp.delta)
            return None
        self.verify_task(task)
        sent, received, started = self._wire()
        blob = self.client.download_model(int(task["model_version"]), str(task["model_sha256"]))
        self._costs = {"device_id": self.config.device_id, "round_id": round_id,
                       "model_version": int(task["model_version"]),
                       "download_seconds": time.perf_counter() - started}
        self._costs.update(self._wire_delta(sent, received, "download"))
        self.verify_model(task, blob)
        started = time.perf_counter()
        arrays = self._load_global(blob)
        self._costs["decode_seconds"] = time.perf_counter() - started
        self._costs["encrypted_model"] = is_ckks_blob(blob)
        set_arrays(self.model, self.personalizer.start(arrays) if self.personalizer is not None else arrays)
        self._last_train_config = tc
        self._trained_on = (task, arrays) if task.get("mode") == "async" else None
        if self.config.cost_log:
            # The device evaluates the global model it decrypted (the server cannot, under CKKS) on its own data.
            metric = self.task.metric
            self._costs[f"global_{metric}_local"] = float(self.task.evaluate(self.model, self.dataset)[metric])
        started = time.perf_counter()
        seed = self._rng.randrange(2**31)
        log.info("%s: round %d training on model version %d (%d examples, %d epochs)", self.config.device_id,
                 round_id, int(task["model_version"]), len(self.dataset), tc.epochs)  # type: ignore[arg-type]
        result = train_local(
            self.model, self.dataset, epochs=tc.epochs, batch_size=tc.batch_size, lr=tc.lr,
            optimizer=tc.optimizer, momentum=tc.momentum, weight_decay=tc.weight_decay, seed=seed,
            proximal_mu=0.0 if dp is not None else tc.proximal_mu, dp=dp,
        )
        if dp is not None and tc.proximal_mu > 0:
            log.warning("%s: round %d trained without the task's proximal term (proximal_mu %g): DP-SGD noises "
                        "per-example gradients only", self.config.device_id, round_id, tc.proximal_mu)
        if result.diverged:
            log.warning("%s: round %d local training stopped after %d steps: a loss, gradient or weight was not "
                        "finite (the last finite weights are uploaded)", self.config.device_id, round_id,
                        result.num_steps)
        self._costs["train_seconds"] = time.perf_counter() - started
        update, num_examples = get_arrays(self.model), result.num_examples
        if self.personalizer is not None:
            update = self.personalizer.after_training(self.model, update, arrays, tc, seed)
        if self.poisoner is not None:
            update, num_examples = self._poison(update, num_examples, arrays, tc, seed)
        meta = {
            "num_examples": str(num_examples),
            "round_id": str(round_id),
            "device_id": self.config.device_id,
        }
        if math.isfinite(result.mean_loss):  # the server refuses a non-finite train_loss
            meta["train_loss"] = repr(float(result.mean_loss))
        if dp is not None:
            self._save_privacy_state(dp)  # before the upload: what leaves the device has been counted
            meta.update(dp.metadata())
            log.info("%s: round %d local DP: epsilon %.4g at delta %g after %d DP-SGD steps", self.config.device_id,
                     round_id, dp.epsilon, dp.delta, dp.steps)
        started = time.perf_counter()
        if self.he_context is not None:
            from qflare.fl.he import encrypt_update

            loss = float(result.mean_loss) if math.isfinite(result.mean_loss) else None
            out = encrypt_update(self.he_context, update, num_examples, self.spec, round_id=round_id, train_loss=loss)
        else:
            out = dump_arrays(update, meta)
        self._costs["encode_seconds"] = time.perf_counter() - started
        self._costs["update_bytes"] = len(out)
        return out

    def _load_global(self, blob: bytes) -> dict[str, Any]:
        """The global model's tensors: a CKKS aggregate decrypted with this device's secret context, else plain."""
        if not is_ckks_blob(blob):
            return load_arrays(blob, self.spec)[0]
        if self.he_context is None:
            raise ConfigError("the server published an encrypted (CKKS) model and this device has no CKKS context: "
                              "set he_context_file to the operator's secret context", reason="he_no_context")
        from qflare.fl.he import decrypt_aggregate

        return decrypt_aggregate(self.he_context, blob, self.spec)

    def _wire(self) -> tuple[int, int, float]:
        return (int(getattr(self.client, "bytes_sent", 0)), int(getattr(self.client, "bytes_received", 0)),
                time.perf_counter())

    def _wire_delta(self, sent: int, received: int, what: str) -> dict[str, int]:
        return {f"{what}_bytes_sent": int(getattr(self.client, "bytes_sent", 0)) - sent,
                f"{what}_bytes_received": int(getattr(self.client, "bytes_received", 0)) - received}

    UPLOAD_ATTEMPTS = 5
    REBASE_ATTEMPTS = 3

    def _retry_wait(self, exc: ServerUnavailable, delay: float) -> float:
        """Seconds until the next attempt: the jittered backoff, or the server's ``Retry-After`` plus up to
        half of it again when that is longer (so a fleet turned away together comes back spread)."""
        wait = delay * (0.5 + self._rng.random())
        if exc.retry_after is not None:
            wait = max(wait, exc.retry_after * (1.0 + 0.5 * self._rng.random()))
        return wait

    def _send_update(self, round_id: int, update: bytes) -> dict[str, Any] | None:
        """Upload ``update`` (in async rounds rebased onto the open buffer first: :meth:`_rebase`)."""
        if self._trained_on is None or int(self._trained_on[0]["round_id"]) != round_id:
            self._last_upload = update
            return self._upload(round_id, update)
        task, _ = self._trained_on
        for attempt in range(1, self.REBASE_ATTEMPTS + 1):
            target, sent = self._rebase(round_id, update)
            self._last_upload = sent
            try:
                return self._upload(target, sent, base_version=int(task["model_version"]))
            except RoundClosed:
                # The buffer filled while this update was on its way: rebase onto the next one.
                if attempt == self.REBASE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _rebase(self, round_id: int, update: bytes) -> tuple[int, bytes]:
        """Async rounds (FedBuff): ``(buffer, update)`` to send for an update trained in ``round_id``.

        If the server has moved on to a newer buffer (model version ``v'``), the update's step from its base
        ``b`` is moved onto ``v'`` and weighted by its staleness ``s = v' - b``:
        ``model[v'] + (1 + s) ** -a * (update - model[b])``. The new base is verified as any task's is; the
        upload names ``b`` (``?base_version=``), so the server checks ``s`` against ``max_staleness``.
        """
        assert self._trained_on is not None
        trained_task, base = self._trained_on
        now = self.client.task()
        if now.get("status") != "train" or int(now["round_id"]) == round_id:
            return round_id, update  # still the same buffer (or none open: the server answers the upload)
        version, latest = int(trained_task["model_version"]), int(now["model_version"])
        staleness = latest - version
        limit = now.get("max_staleness")
        if limit is not None and staleness > int(limit):
            raise UpdateRejected(f"trained on model version {version}, {staleness} versions behind {latest} "
                                 f"(max_staleness {limit}): not sent", reason="too_stale")
        self.verify_task(now)
        blob = self.client.download_model(latest, str(now["model_sha256"]))
        self.verify_model(now, blob)
        current, _ = load_arrays(blob, self.spec)
        arrays, meta = load_arrays(update, self.spec)
        weight = (1.0 + staleness) ** -float(now.get("staleness_exponent") or 0.0)
        rebased = {k: (current[k] + weight * (arrays[k] - base[k])).astype(arrays[k].dtype) for k in arrays}
        target = int(now["round_id"])
        meta["round_id"] = str(target)
        log.info("%s: update trained on version %d rebased onto version %d (buffer %d, staleness %d, weight %.3f)",
                 self.config.device_id, version, latest, target, staleness, weight)
        return target, dump_arrays(rebased, meta)

    def _upload(self, round_id: int, update: bytes, base_version: int | None = None) -> dict[str, Any] | None:
        """Upload ``update``; after a 5xx re-send it (a fresh envelope each time, docs/protocol.md 13.3).

        A 5xx can come after the server durably accepted the update (the enclave died while sealing
        the answer), so a ``duplicate_update`` refusal of a re-send means accepted: ``None`` is returned
        (there is no receipt). A duplicate on the first attempt stays a refusal. A ``server_busy`` answer
        (the upload turned away unread, server/ingest.py) uses no attempt while the round's deadline
        (the task's ``deadline_at``) is still ahead after the wait: the device waits its ``Retry-After``
        and re-sends the update it trained, instead of giving up and training the round again.
        """
        rc = self.config.retry
        deadline_at = self._deadline_at
        delay = rc.initial_seconds
        attempt = 0
        while True:
            attempt += 1
            try:
                if base_version is None:
                    return self.client.upload_update(round_id, update)
                return self.client.upload_update(round_id, update, base_version=base_version)
            except ServerUnavailable as exc:
                wait = self._retry_wait(exc, delay)
                if exc.busy and deadline_at is not None and time.time() + wait < deadline_at:
                    attempt -= 1  # turned away unread: not a failed attempt
                elif attempt >= self.UPLOAD_ATTEMPTS:
                    raise
                self.stats.retries += 1
                log.info("%s: round %d upload unanswered (%s: %s); re-sending in %.1f s", self.config.device_id,
                         round_id, exc.reason, exc.message, wait)
                self.sleep(wait)
                delay = min(delay * 2, rc.max_seconds)
            except DuplicateUpdate:
                if attempt == 1:
                    raise
                return None

    def _audit(self, *, final: bool = False, open_round: int | None = None) -> Callable[[], None]:
        """Check the server's ledger (``LedgerAuditor.check``) in a thread while the device trains, if a
        check is due (``LedgerAuditor.due``) or ``final``; the returned function waits for it and raises its
        ``LedgerIntegrityError`` (rollback, fork, missing update: stop). So auditing costs the round no
        time, yet no update leaves before a due check held.

        ``open_round``: a wait answer names the round this device's update was accepted in as still open.
        If every pending receipt is that update's, no checkpoint can cover it yet (the round's close issues
        the one that does), so the receipt alone does not make a check due at this poll; the next round's
        task, the end of the run and the audit interval still do. A server that keeps naming a closed round
        as open only delays the check to one of those."""
        auditor = self.auditor
        if auditor is None:
            return lambda: None
        receipt = self._open_receipt
        waiting = (open_round is not None and receipt is not None and receipt[0] == open_round
                   and all(index == receipt[1] for index, _ in auditor.pending))
        if not (final or auditor.due(pending=not waiting)):
            return lambda: None
        failure: list[BaseException] = []

        def run() -> None:
            try:
                auditor.check()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the device's thread
                failure.append(exc)

        # Named after the device's thread: a fleet process files the thread's log lines with the device's.
        thread = threading.Thread(target=run, name=f"{threading.current_thread().name}-ledger-audit", daemon=True)
        thread.start()

        def join() -> None:
            thread.join()
            if failure:
                raise failure[0]

        return join

    def step(self) -> str:
        """One poll: returns the task status seen (``train``, ``wait`` or ``done``).

        The device audits the server's ledger when a check is due (``LedgerAuditor.due``: first contact,
        an accepted update not yet proven included, the audit interval passed) and before it finishes:
        while it trains (before its update is sent), or before it waits."""
        task = self.client.task(wait=self.config.long_poll_seconds)
        status = str(task.get("status"))
        waits_for = task.get("round_id") if status == "wait" else None
        audited = self._audit(final=status == "done", open_round=waits_for if isinstance(waits_for, int) else None)
        if status == "train":
            self._waiting_for = None
            round_id = int(task["round_id"])
            deadline = task.get("deadline_at")
            self._deadline_at = float(deadline) if isinstance(deadline, int | float) else None
            try:
                update = self.train_round(task)
            finally:
                audited()  # LedgerIntegrityError: stop before anything is sent
            if update is None:
                return "done"  # the local privacy budget is spent: this device takes no further part
            try:
                sent, received, started = self._wire()
                self._last_upload = None
                receipt = self._send_update(round_id, update)
                if self.config.cost_log:
                    self._costs["upload_seconds"] = time.perf_counter() - started
                    self._costs.update(self._wire_delta(sent, received, "upload"))
                    log.info("%s: round %d costs %s", self.config.device_id, round_id,
                             json.dumps(self._costs, sort_keys=True))
                self.stats.uploads_accepted += 1
                if self.auditor is not None and receipt is not None:
                    uploaded = self._last_upload if self._last_upload is not None else update
                    self.auditor.expect(receipt, device_id=self.config.device_id,
                                        update_sha256=hashlib.sha256(uploaded).hexdigest())
                    index = receipt.get("ledger_index")
                    self._open_receipt = (round_id, index) if isinstance(index, int) else None
                log.info("%s: round %d update accepted%s", self.config.device_id, round_id,
                         "" if receipt is not None else " (duplicate_update after an unanswered attempt)")
            except (Conflict, NotFound, InvalidInput) as exc:
                # A late update (the round closed or is no longer aggregated), a duplicate, or one the
                # server's validation refused: a normal event in a federation. Log it, go on to the next task.
                self.stats.uploads_refused += 1
                self.stats.refusals.append(exc.reason)
                log.warning("%s: round %d update refused (%s): %s", self.config.device_id, round_id, exc.reason,
                            exc.message)
            self.stats.rounds_trained += 1
        else:
            audited()
        if status == "done" and self.personalizer is not None:
            try:
                self.report_personalized(task)
            except QFlareError as exc:  # the run is over either way: say why the report is missing
                log.warning("%s: personalised metrics not reported (%s): %s", self.config.device_id, exc.reason,
                            exc.message)
                self._reported = True
        if status == "wait":
            reason = task.get("reason")
            if reason and reason != self._waiting_for:
                log.info("%s: %s", self.config.device_id, reason)
                self._waiting_for = str(reason)
            if not task.get("waited"):  # a long-polled answer was paced by the server: ask again at once
                self.sleep(min(float(task.get("retry_after", 1.0)) or self.config.poll_interval_seconds,
                               self.config.poll_interval_seconds))
        return status

    def run(self, *, max_rounds: int | None = None) -> NodeStats:
        """Poll and train until the server says ``done`` (or ``max_rounds`` rounds were trained)."""
        rc = self.config.retry
        delay = rc.initial_seconds
        down_since: float | None = None
        reattested = False

        def back_off(exc: QFlareError, what: str) -> None:
            nonlocal delay, down_since
            now = self.clock()
            down_since = down_since if down_since is not None else now
            if rc.give_up_after_seconds is not None and now - down_since > rc.give_up_after_seconds:
                raise GaveUp(f"{what} for {now - down_since:.0f} s: {exc.message}", reason=exc.reason) from None
            self.stats.retries += 1
            wait = (self._retry_wait(exc, delay) if isinstance(exc, ServerUnavailable)
                    else delay * (0.5 + self._rng.random()))
            log.info("%s: %s (%s: %s); retrying in %.1f s", self.config.device_id, what, exc.reason, exc.message, wait)
            self.sleep(wait)
            delay = min(delay * 2, rc.max_seconds)

        while max_rounds is None or self.stats.rounds_trained < max_rounds:
            try:
                status = self.step()
                delay, down_since, reattested = rc.initial_seconds, None, False
            except LedgerIntegrityError as exc:
                log.error("%s: refusing to go on: the server's audit ledger failed verification: %s (%s)",
                          self.config.device_id, exc.message, exc.reason)
                raise
            except (ServerUnavailable, QKDError) as exc:
                # QKD required but no key to be had: wait for the link, never fall back to ML-KEM alone.
                back_off(exc, "server unavailable")
                continue
            except (DecryptionFailed, InvalidSignature) as exc:
                # The enclave may have been replaced: attest afresh once (the pinned policy still
                # decides), then give up if it happens again.
                if self.client.attestation_required and not reattested:
                    log.warning("%s: %s; verifying a fresh enclave quote", self.config.device_id, exc.message)
                    self.client.attest()
                    reattested = True
                    continue
                if exc.authenticated:
                    log.error("%s: refused: %s", self.config.device_id, exc.message)
                    raise
                back_off(exc, "refused by an unauthenticated answer (a hint)")
                continue
            except AttestationError as exc:
                log.error("%s: refusing to send anything to this server: %s (%s)", self.config.device_id,
                          exc.message, exc.reason)
                raise
            except (AuthenticationError, PermissionDenied) as exc:
                if exc.authenticated:
                    log.error("%s: refused by the server: %s", self.config.device_id, exc.message)
                    raise
                # A plain (unsealed) refusal could come from anyone on the path: a hint, never final. Back
                # off and ask again; a device that is really refused keeps getting the same answer.
                back_off(exc, "refused by an unauthenticated answer (a hint)")
                continue
            if status == "done":
                if self.config.exit_when_done:
                    break
                self.sleep(self.config.poll_interval_seconds)
        return self.stats


def he_context_for(cfg: DeviceConfig, base: Path) -> Any:
    """The device's CKKS secret context (``he_context_file``, from the operator), or ``None``."""
    if cfg.he_context_file is None:
        return None
    from qflare.fl.he import load_secret_context

    return load_secret_context(cfg.resolve(cfg.he_context_file, base))


def privacy_state_file(cfg: DeviceConfig, base: Path) -> Path:
    """Where a device keeps its local-DP spend (beside its identity key, as the ledger auditor's state)."""
    return cfg.resolve(cfg.identity_key_file, base).with_suffix(".dp-spent.json")
