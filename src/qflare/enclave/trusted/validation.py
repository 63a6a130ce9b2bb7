"""Update validation inside the enclave: parse, check against the spec, finite, bounded norm.

The same checks as :class:`qflare.server.aggregation.InProcessAggregator`; the metadata rules are
repeated here rather than imported, because the enclave must not load the server package (it is
not measured). ``parse_update_metadata`` belongs in ``qflare.fl`` so both can share it (asked for in
the enclave report).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from qflare.errors import MalformedPayload, UpdateRejected
from qflare.fl.checks import check_update_norm
from qflare.fl.serialize import load_arrays
from qflare.fl.spec import ModelSpec
from qflare.types import NDArrays

__all__ = ["MAX_EXAMPLES_PER_UPDATE", "ParsedUpdate", "parse_update", "parse_update_metadata"]

MAX_EXAMPLES_PER_UPDATE: Final = 10_000_000


@dataclass(frozen=True)
class ParsedUpdate:
    """A validated update's tensors and metadata."""

    arrays: NDArrays
    num_examples: int
    train_loss: float | None


def parse_update_metadata(meta: Mapping[str, str]) -> tuple[int, float | None]:
    """``num_examples`` (required, 1..10,000,000) and ``train_loss`` (optional, finite)."""
    raw = meta.get("num_examples")
    if raw is None:
        raise MalformedPayload("update metadata lacks num_examples", reason="missing_num_examples")
    try:
        num = int(raw)
    except ValueError:
        raise MalformedPayload(f"num_examples is not an integer: {raw[:32]!r}", reason="bad_num_examples") from None
    if not 0 < num <= MAX_EXAMPLES_PER_UPDATE:
        raise UpdateRejected(f"num_examples out of range: {num}", reason="bad_num_examples")
    loss: float | None = None
    if "train_loss" in meta:
        try:
            loss = float(meta["train_loss"])
        except ValueError:
            raise MalformedPayload("train_loss is not a number", reason="bad_train_loss") from None
        if not math.isfinite(loss):
            raise UpdateRejected("train_loss is not finite", reason="bad_train_loss")
    return num, loss


def parse_update(
    payload: bytes, spec: ModelSpec, *, max_norm: float | None, reference: NDArrays | None
) -> ParsedUpdate:
    """Parse and validate one update (raises an ``InvalidInput`` error)."""
    arrays, meta = load_arrays(payload, spec)
    num, loss = parse_update_metadata(meta)
    if max_norm is not None:
        # Bound the change the update makes to the global model, not the size of the weights.
        check_update_norm(arrays, max_norm, reference=reference)
    return ParsedUpdate(arrays=arrays, num_examples=num, train_loss=loss)
