"""The CKKS aggregation backend (``aggregation.he.scheme: ckks``): the server sums ciphertexts it cannot read.

It implements :class:`qflare.fl.port.AggregationBackend` with :class:`qflare.fl.he.HESumAccumulator`
built from the operator's **public** context (a context file holding the secret key is refused when the
server starts). An upload's payload, decrypted from its envelope by the gateway as any upload is, is a
``ckks-update`` blob (docs/protocol.md 12.1); the round's "model" is the ``ckks-aggregate`` blob: the
encrypted sum of ``num_examples x update`` and the total count, which only devices can decrypt. Version 0
stays the task's plaintext initial model (public: it is made from the config's seed).

The sum runs on the host, also where an enclave exists: it needs no secret, the ciphertexts reveal
nothing to whoever adds them, and the enclave would have to load TenSEAL into its measured code for no
confidentiality gain (docs/privacy.md). Refusals change nothing: a blob is checked in full
(:meth:`validate`) before it is stored or added.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qflare.errors import AggregationError, MalformedPayload, UpdateRejected
from qflare.fl.he import CheckedUpdate, HESumAccumulator, is_ckks_blob, load_public_context
from qflare.fl.port import PlainUpdate, UpdateInput, ValidatedUpdate
from qflare.fl.serialize import ModelSpec, sha256_hex
from qflare.server.aggregation import round_being_aggregated

__all__ = ["HEAggregator"]


@dataclass
class _Round:
    acc: HESumAccumulator
    seconds: float = 0.0  # checking and adding ciphertexts (validate + accumulate), this round
    bytes_in: int = 0
    sha256s: list[str] = field(default_factory=list)


class HEAggregator:
    """Sum CKKS updates under the operator's public context; never decrypts (it holds no secret key).

    Parameters
    ----------
    public_context_file:
        The operator's public context (``qflare he init --public-out``); refused if it holds a secret key.
    """

    def __init__(self, public_context_file: Path) -> None:
        import tenseal as ts

        self._public = load_public_context(public_context_file)  # ConfigError he_secret_key_on_server
        self._ctx: Any = ts.context_from(self._public)
        self._rounds: dict[int, _Round] = {}
        self._metrics: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the public context: what every accepted blob names."""
        return sha256_hex(self._public)

    def begin_round(self, round_id: int, base_model: bytes, spec: ModelSpec) -> None:
        # The base model (plaintext v0 or the previous encrypted sum) is not needed: a sum starts from zero.
        with self._lock:
            self._rounds[round_id] = _Round(HESumAccumulator(self._public, spec, context=self._ctx))

    def _round(self, round_id: int) -> _Round:
        return round_being_aggregated(self._rounds, round_id)

    def validate(self, round_id: int, update: UpdateInput) -> ValidatedUpdate:
        if not isinstance(update, PlainUpdate):
            raise TypeError("HEAggregator validates opened updates (PlainUpdate) only")
        started = time.perf_counter()
        state = self._round(round_id)
        if not is_ckks_blob(update.data):
            raise UpdateRejected("this server aggregates CKKS ciphertexts only (aggregation.he.scheme ckks): a "
                                 "plaintext update is refused, so none reaches the server host", reason="he_required")
        try:
            checked = state.acc.check(update.data, round_id=round_id)
        except AggregationError as exc:
            kind = MalformedPayload if exc.reason == "he_malformed" else UpdateRejected
            raise kind(exc.message, reason=exc.reason) from None
        with self._lock:  # uploads are validated concurrently (the route's worker threads)
            state.seconds += time.perf_counter() - started
        return ValidatedUpdate(
            round_id=round_id, num_examples=checked.num_examples, train_loss=checked.train_loss,
            sha256=sha256_hex(update.data), size_bytes=len(update.data), stored=update.data, handle=checked,
        )

    def accumulate(self, update: ValidatedUpdate) -> None:
        assert isinstance(update.handle, CheckedUpdate)
        with self._lock:
            started = time.perf_counter()
            state = self._round(update.round_id)
            state.acc.add_checked(update.handle)
            state.bytes_in += update.size_bytes
            state.sha256s.append(update.sha256)
            state.seconds += time.perf_counter() - started

    def replay(self, round_id: int, stored: bytes) -> None:
        self.accumulate(self.validate(round_id, PlainUpdate(stored)))

    def finalize(self, round_id: int) -> bytes:
        with self._lock:
            state = self._round(round_id)
            if state.acc.count == 0:
                raise AggregationError(f"round {round_id} has no updates", reason="no_updates")
            started = time.perf_counter()
            blob = state.acc.result(round_id=round_id)
            sum_seconds = state.seconds + time.perf_counter() - started
            self._metrics[round_id] = {"scheme": "ckks", "context": self.fingerprint[:16],
                                       "ciphertext_bytes_in": state.bytes_in, "aggregate_bytes": len(blob),
                                       "server_seconds": sum_seconds}
            del self._rounds[round_id]
        return blob

    def round_metrics(self, round_id: int) -> dict[str, Any]:
        """What the round's metrics carry under ``he`` (once; then forgotten)."""
        with self._lock:
            return self._metrics.pop(round_id, {})

    def abort_round(self, round_id: int) -> None:
        with self._lock:
            self._rounds.pop(round_id, None)

    def published_entry(self, round_id: int) -> bytes | None:
        return None  # no enclave: the server's ledger writes and signs the entry

    def model_signature(self, round_id: int) -> bytes | None:
        return None

    def sign_round_task(self, round_id: int, model_sha256: str, deadline_at: float) -> bytes | None:
        return None
