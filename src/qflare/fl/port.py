"""The aggregation port: what the round orchestrator asks of whoever validates and aggregates updates.

Both the in-process backend (``qflare.server.aggregation.InProcessAggregator``) and the enclave adapter
(``qflare.enclave.backend.EnclaveAggregator``) implement :class:`AggregationBackend`; neither imports
the other, and the orchestrator sees only this module. An update reaches a backend in exactly one of two
forms, each a distinct type, and each backend accepts exactly one:

- :class:`PlainUpdate`: the update's bytes, decrypted by the web process (``enclave.backend: none``);
- :class:`SealedUpdate`: the still-sealed request envelope, which only the enclave can open.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from qflare.fl.spec import ModelSpec

__all__ = ["AggregationBackend", "PlainUpdate", "SealedUpdate", "UpdateInput", "ValidatedUpdate"]


@dataclass(frozen=True)
class PlainUpdate:
    """An update's serialized tensors (safetensors), already decrypted."""

    data: bytes = field(repr=False)


@dataclass(frozen=True)
class SealedUpdate:
    """An update still inside its request envelope, with what opening it needs.

    Parameters
    ----------
    envelope:
        The request envelope's bytes, as the device sent them.
    allowed_key_sources:
        The key sources this device may use (its enrollment).
    extra_secret:
        The QKD key for a ``hybrid`` or ``qkd`` envelope, fetched by the host from its KME.
    """

    envelope: bytes = field(repr=False)
    allowed_key_sources: tuple[str, ...] = ()
    extra_secret: bytes | None = field(default=None, repr=False)


UpdateInput = PlainUpdate | SealedUpdate


@dataclass(frozen=True)
class ValidatedUpdate:
    """An update that passed validation.

    ``stored`` is what the server persists so the update can be replayed after a restart (the raw
    update in process; a sealed blob behind an enclave). ``handle`` is opaque to the server: the
    backend's reference to the validated tensors, which stay on the backend's side of the boundary.
    ``norm`` is the L2 norm of the update's step from the round's base model, when the backend computed it.
    ``ledger_entry`` is the update's ``update_accepted`` ledger entry when the backend produces and signs
    it itself (the enclave does; ``docs/ledger.md``, "Signed entries"), else ``None``.
    ``dp_epsilon`` is the local-DP epsilon the update's metadata reports (``None``: no local DP).
    """

    round_id: int
    num_examples: int
    train_loss: float | None
    sha256: str
    size_bytes: int
    stored: bytes = field(repr=False, compare=False)
    handle: Any = field(repr=False, compare=False)
    norm: float | None = None
    ledger_entry: bytes | None = field(default=None, repr=False, compare=False)
    dp_epsilon: float | None = None  # the local-DP epsilon the device reports in its (signed) update


@runtime_checkable
class AggregationBackend(Protocol):
    """Validates and aggregates updates; the orchestrator's only way to touch model tensors."""

    def begin_round(self, round_id: int, base_model: bytes, spec: ModelSpec) -> None:
        """Start aggregating ``round_id`` on top of the global model ``base_model``."""

    def validate(self, round_id: int, update: UpdateInput) -> ValidatedUpdate:
        """Check one update (raise an ``InvalidInput`` error); does not yet count it.

        A backend accepts one form of :data:`UpdateInput` and raises ``TypeError`` for the other.
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

    def published_entry(self, round_id: int) -> bytes | None:
        """The round's ``aggregate_published`` ledger entry as the backend produced and signed it, or
        ``None`` if it does not (the server's ledger then writes and signs it)."""

    def sign_round_task(self, round_id: int, model_sha256: str, deadline_at: float) -> bytes | None:
        """A signature binding round, base model and deadline, or ``None`` if the backend does not sign."""


def allowed_sources(sources: Collection[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """``sources`` as a sorted tuple, or ``default`` when none are given."""
    return default if not sources else tuple(sorted(sources))
