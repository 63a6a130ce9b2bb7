"""The in-process aggregation backend: validation and the configured rule in the server process.

It implements :class:`qflare.fl.port.AggregationBackend`, as the enclave adapter does, on the same
code: :func:`qflare.fl.checks.parse_update` validates, the configured
:class:`~qflare.fl.strategies.Strategy` builds the accumulator. Used with ``enclave.backend: none``
(no isolation: the server host sees every update).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from qflare.errors import AggregationError, NotFound
from qflare.fl.aggregate import Accumulator
from qflare.fl.checks import parse_update
from qflare.fl.port import PlainUpdate, UpdateInput, ValidatedUpdate
from qflare.fl.serialize import ModelSpec, dump_arrays, load_arrays, sha256_hex
from qflare.fl.strategies import FedAvg, Strategy
from qflare.fl.strategies.server_opt import ServerOptStrategy
from qflare.types import NDArrays

__all__ = ["InProcessAggregator", "round_being_aggregated"]

_R = TypeVar("_R")


def round_being_aggregated(rounds: Mapping[int, _R], round_id: int) -> _R:
    """``rounds[round_id]``, or the ``unknown_round`` refusal every aggregation backend gives for a round it
    does not aggregate (never begun, already finalized or aborted)."""
    state = rounds.get(round_id)
    if state is None:
        raise NotFound(f"round {round_id} is not being aggregated", reason="unknown_round")
    return state


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
    state_dir:
        Where a server optimizer (FedAvgM, FedAdam, ...) keeps its state after each round, named by the
        model it produced, so that a restarted server resumes it for a round on that model. ``None``:
        the state lives in this object only (a restart starts the optimizer afresh).
    """

    def __init__(self, strategy: Strategy | None = None, *, max_update_norm: float | None = None,
                 state_dir: str | os.PathLike[str] | None = None) -> None:
        self.strategy = strategy or FedAvg()
        self._max_norm = max_update_norm
        self._state_dir = Path(state_dir) if state_dir is not None else None
        self._rounds: dict[int, _RoundState] = {}
        self._flagged: dict[int, list[str]] = {}
        self._lock = threading.Lock()

    def _optimizer_path(self, model_sha256: str) -> Path:
        assert self._state_dir is not None
        return self._state_dir / f"server-optimizer-{model_sha256[:32]}.safetensors"

    def _resume_optimizer(self, base_model: bytes) -> None:
        """Load the optimizer state persisted with ``base_model`` (if any) into the strategy."""
        if self._state_dir is None or not isinstance(self.strategy, ServerOptStrategy):
            return
        path = self._optimizer_path(sha256_hex(base_model))
        if path.exists():
            arrays, meta = load_arrays(path.read_bytes())
            if meta.get("optimizer") == self.strategy.optimizer:
                self.strategy.from_state(arrays)

    def _persist_optimizer(self, model: bytes) -> None:
        """Write the optimizer state after the step that made ``model``; keep it and the one before."""
        if self._state_dir is None or not isinstance(self.strategy, ServerOptStrategy):
            return
        self._state_dir.mkdir(parents=True, exist_ok=True)
        path = self._optimizer_path(sha256_hex(model))
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(dump_arrays(self.strategy.state(), {"optimizer": self.strategy.optimizer}))
        os.replace(tmp, path)
        older = sorted(self._state_dir.glob("server-optimizer-*.safetensors"), key=lambda p: p.stat().st_mtime)
        for stale in older[:-2]:  # the previous one stays: the model of this round may not be stored yet
            stale.unlink(missing_ok=True)

    def begin_round(self, round_id: int, base_model: bytes, spec: ModelSpec) -> None:
        with self._lock:
            self._resume_optimizer(base_model)
            need_base = self._max_norm is not None or self.strategy.needs_reference
            base = load_arrays(base_model, spec)[0] if need_base else None
            acc = self.strategy.accumulator(spec, reference=base)
            self._rounds[round_id] = _RoundState(spec=spec, acc=acc, base=base)

    def _state(self, round_id: int) -> _RoundState:
        return round_being_aggregated(self._rounds, round_id)

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
            dp_epsilon=parsed.dp_epsilon,
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
            model = dump_arrays(result, {"round_id": str(round_id)})
            self._persist_optimizer(model)
        return model

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
