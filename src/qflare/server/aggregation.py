"""The in-process aggregation backend: validation and the configured rule in the server process.

It implements :class:`qflare.fl.port.AggregationBackend`, as the enclave adapter does, on the same
code: :func:`qflare.fl.checks.parse_update` validates, the configured
:class:`~qflare.fl.strategies.Strategy` builds the accumulator. Used with ``enclave.backend: none``
(no isolation: the server host sees every update).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from qflare.errors import AggregationError, NotFound
from qflare.fl.aggregate import Accumulator
from qflare.fl.checks import parse_update
from qflare.fl.port import PlainUpdate, UpdateInput, ValidatedUpdate
from qflare.fl.serialize import ModelSpec, dump_arrays, load_arrays, sha256_hex
from qflare.fl.strategies import FedAvg, Strategy
from qflare.types import NDArrays

__all__ = ["InProcessAggregator"]


@dataclass
class _RoundState:
    spec: ModelSpec
    acc: Accumulator
    base: NDArrays | None  # the round's global model, kept only when the norm bound or the rule needs it
    sha256s: list[str] = field(default_factory=list)  # of each accumulated update, in add order


class InProcessAggregator:
    """Validate and aggregate updates in this process with ``strategy`` (FedAvg streams: O(model) memory).

    Parameters
    ----------
    strategy:
        The aggregation rule (default FedAvg).
    max_update_norm:
        Reject an update whose L2 norm over all tensors exceeds this bound; ``None`` disables the check.
    """

    def __init__(self, strategy: Strategy | None = None, *, max_update_norm: float | None = None) -> None:
        self.strategy = strategy or FedAvg()
        self._max_norm = max_update_norm
        self._rounds: dict[int, _RoundState] = {}
        self._flagged: dict[int, list[str]] = {}
        self._lock = threading.Lock()

    def begin_round(self, round_id: int, base_model: bytes, spec: ModelSpec) -> None:
        with self._lock:
            need_base = self._max_norm is not None or self.strategy.needs_reference
            base = load_arrays(base_model, spec)[0] if need_base else None
            acc = self.strategy.accumulator(spec, reference=base)
            self._rounds[round_id] = _RoundState(spec=spec, acc=acc, base=base)

    def _state(self, round_id: int) -> _RoundState:
        state = self._rounds.get(round_id)
        if state is None:
            raise NotFound(f"round {round_id} is not being aggregated", reason="unknown_round")
        return state

    def validate(self, round_id: int, update: UpdateInput) -> ValidatedUpdate:
        # In process the gateway has already decrypted the request: only plaintext updates come here.
        if not isinstance(update, PlainUpdate):
            raise TypeError("InProcessAggregator validates decrypted updates (PlainUpdate) only")
        state = self._state(round_id)
        parsed = parse_update(update.data, state.spec, max_norm=self._max_norm, reference=state.base)
        return ValidatedUpdate(
            round_id=round_id,
            num_examples=parsed.num_examples,
            train_loss=parsed.train_loss,
            sha256=sha256_hex(update.data),
            size_bytes=len(update.data),
            stored=update.data,
            handle=parsed.arrays,
            norm=parsed.norm,
        )

    def accumulate(self, update: ValidatedUpdate) -> None:
        with self._lock:
            state = self._state(update.round_id)
            state.acc.add(update.handle, update.num_examples)
            state.sha256s.append(update.sha256)

    def replay(self, round_id: int, stored: bytes) -> None:
        self.accumulate(self.validate(round_id, PlainUpdate(stored)))

    def finalize(self, round_id: int) -> bytes:
        with self._lock:
            state = self._state(round_id)
            if state.acc.count == 0:
                raise AggregationError(f"round {round_id} has no updates", reason="no_updates")
            result = state.acc.result()
            outcome = state.acc.last_outcome
            self._flagged[round_id] = [state.sha256s[i] for i in outcome.flagged] if outcome is not None else []
            del self._rounds[round_id]
        return dump_arrays(result, {"round_id": str(round_id)})

    def flagged_updates(self, round_id: int) -> list[str]:
        """SHA-256 of the updates the rule flagged when ``round_id`` was finalized (once; then forgotten)."""
        with self._lock:
            return self._flagged.pop(round_id, [])

    def abort_round(self, round_id: int) -> None:
        with self._lock:
            self._rounds.pop(round_id, None)

    def published_entry(self, round_id: int) -> bytes | None:
        """In process there is no enclave: the server's ledger writes and signs the entry."""
        return None

    def model_signature(self, round_id: int) -> bytes | None:
        return None  # nothing to attest in process: the server itself is the trust anchor

    def sign_round_task(self, round_id: int, model_sha256: str, deadline_at: float) -> bytes | None:
        return None
