"""Where updates are validated and aggregated: the boundary that the enclave will own.

The orchestrator never touches update tensors itself. It hands the raw bytes to an
:class:`AggregationBackend`, which validates them against the round's model spec, keeps a running
aggregate and produces the next global model. :class:`InProcessAggregator` runs this in the server
process; the enclave backend runs the same steps behind the enclave boundary.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from qflare.errors import AggregationError, NotFound
from qflare.fl.aggregate import FedAvgAccumulator
from qflare.fl.checks import parse_update_metadata
from qflare.fl.serialize import ModelSpec, check_update_norm, dump_arrays, load_arrays, sha256_hex
from qflare.types import NDArrays


@dataclass(frozen=True)
class ValidatedUpdate:
    """An update that passed validation.

    ``stored`` is what the server persists so the update can be replayed after a restart (the raw
    update in process; a sealed blob behind an enclave). ``handle`` is opaque to the server: the
    backend's reference to the validated tensors, which stay on the backend's side of the boundary.
    """

    round_id: int
    num_examples: int
    train_loss: float | None
    sha256: str
    size_bytes: int
    stored: bytes = field(repr=False, compare=False)
    handle: Any = field(repr=False, compare=False)


class AggregationBackend(Protocol):
    """Validates and aggregates updates; the orchestrator's only way to touch model tensors."""

    def begin_round(self, round_id: int, base_model: bytes, spec: ModelSpec) -> None:
        """Start aggregating ``round_id`` on top of the global model ``base_model``."""

    def validate(
        self,
        round_id: int,
        blob: bytes,
        *,
        allowed_key_sources: Collection[str] | None = None,
        extra_secret: bytes | None = None,
    ) -> ValidatedUpdate:
        """Check one update (raise an ``InvalidInput`` error); does not yet count it.

        ``blob`` is the update itself, or for a backend that decrypts (the enclave) the request
        envelope; the key-source policy and QKD key then go with it.
        """

    def accumulate(self, update: ValidatedUpdate) -> None:
        """Add a validated update to the round's running aggregate."""

    def replay(self, round_id: int, stored: bytes) -> None:
        """Re-accumulate an update persisted before a restart (its ``stored`` bytes)."""

    def finalize(self, round_id: int) -> bytes:
        """Aggregate the round and return the new global model's bytes; forget the round."""

    def abort_round(self, round_id: int) -> None:
        """Forget the round without aggregating."""

    def model_signature(self, round_id: int) -> bytes | None:
        """The backend's signature over the model ``finalize`` returned, or ``None`` if it does not sign."""

    def sign_round_task(self, round_id: int, model_sha256: str, deadline_at: float) -> bytes | None:
        """A signature binding round, base model and deadline, or ``None`` if the backend does not sign."""


@dataclass
class _RoundState:
    spec: ModelSpec
    acc: FedAvgAccumulator
    base: NDArrays | None  # the round's global model, kept only when the norm bound needs it


class InProcessAggregator:
    """Validate and FedAvg-aggregate updates in this process, streaming (O(model) memory per round).

    Parameters
    ----------
    max_update_norm:
        Reject an update whose L2 norm over all tensors exceeds this bound; ``None`` disables the check.
    """

    def __init__(self, *, max_update_norm: float | None = None) -> None:
        self._max_norm = max_update_norm
        self._rounds: dict[int, _RoundState] = {}
        self._lock = threading.Lock()

    def begin_round(self, round_id: int, base_model: bytes, spec: ModelSpec) -> None:
        with self._lock:
            base = load_arrays(base_model, spec)[0] if self._max_norm is not None else None
            self._rounds[round_id] = _RoundState(spec=spec, acc=FedAvgAccumulator(spec), base=base)

    def _state(self, round_id: int) -> _RoundState:
        state = self._rounds.get(round_id)
        if state is None:
            raise NotFound(f"round {round_id} is not being aggregated", reason="unknown_round")
        return state

    def validate(
        self,
        round_id: int,
        blob: bytes,
        *,
        allowed_key_sources: Collection[str] | None = None,
        extra_secret: bytes | None = None,
    ) -> ValidatedUpdate:
        # In process the gateway has already decrypted the request: blob is the plaintext update.
        state = self._state(round_id)
        arrays, meta = load_arrays(blob, state.spec)
        num, loss = parse_update_metadata(meta)
        if self._max_norm is not None:
            # Bound the change the update makes to the global model, not the size of the weights.
            check_update_norm(arrays, self._max_norm, reference=state.base)
        return ValidatedUpdate(
            round_id=round_id,
            num_examples=num,
            train_loss=loss,
            sha256=sha256_hex(blob),
            size_bytes=len(blob),
            stored=blob,
            handle=arrays,
        )

    def accumulate(self, update: ValidatedUpdate) -> None:
        with self._lock:
            self._state(update.round_id).acc.add(update.handle, update.num_examples)

    def replay(self, round_id: int, stored: bytes) -> None:
        self.accumulate(self.validate(round_id, stored))

    def finalize(self, round_id: int) -> bytes:
        with self._lock:
            state = self._state(round_id)
            if state.acc.count == 0:
                raise AggregationError(f"round {round_id} has no updates", reason="no_updates")
            result = state.acc.result()
            del self._rounds[round_id]
        return dump_arrays(result, {"round_id": str(round_id)})

    def abort_round(self, round_id: int) -> None:
        with self._lock:
            self._rounds.pop(round_id, None)

    def model_signature(self, round_id: int) -> bytes | None:
        return None  # nothing to attest in process: the server itself is the trust anchor

    def sign_round_task(self, round_id: int, model_sha256: str, deadline_at: float) -> bytes | None:
        return None
