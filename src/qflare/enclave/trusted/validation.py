"""Update validation inside the enclave: parse, check against the spec, finite, bounded norm.

The same checks as :class:`qflare.server.aggregation.InProcessAggregator`: both take the metadata
rules from :func:`qflare.fl.checks.parse_update_metadata` (the enclave must not load the server
package, which is not measured).
"""

from __future__ import annotations

from dataclasses import dataclass

from qflare.fl.checks import MAX_EXAMPLES_PER_UPDATE, check_update_norm, parse_update_metadata
from qflare.fl.serialize import load_arrays
from qflare.fl.spec import ModelSpec
from qflare.types import NDArrays

__all__ = ["MAX_EXAMPLES_PER_UPDATE", "ParsedUpdate", "parse_update", "parse_update_metadata"]



@dataclass(frozen=True)
class ParsedUpdate:
    """A validated update's tensors and metadata."""

    arrays: NDArrays
    num_examples: int
    train_loss: float | None


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
