"""One round's state inside the enclave: the streaming FedAvg aggregate, the updates it counts, and
its sealed checkpoint.

Every update gets a random 16-byte id when it is validated. The id travels in the public header of
the stored update (:mod:`qflare.enclave.stored`), so the host can tell its stored updates apart;
the enclave counts each id at most once per round, so the host cannot double-count an update by
replaying it. A checkpoint seals the running sum (float64), the count, the total number of examples
and the ids counted so far.
"""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from qflare.enclave.trusted.validation import ParsedUpdate
from qflare.errors import InvalidInput
from qflare.fl.aggregate import FedAvgAccumulator
from qflare.fl.spec import ModelSpec
from qflare.types import NDArrays

__all__ = ["CHECKPOINT_PURPOSE", "RoundState", "checkpoint_header"]

CHECKPOINT_PURPOSE: Final = "round-checkpoint"
_CKPT_HEADER: Final = struct.Struct(">4sQ32s32s")
_CKPT_MAGIC: Final = b"QFCP"


def checkpoint_header(round_id: int, base_sha256: str, spec: ModelSpec) -> bytes:
    """The public header of a checkpoint: which round, base model and spec it belongs to."""
    return _CKPT_HEADER.pack(_CKPT_MAGIC, round_id, bytes.fromhex(base_sha256), bytes.fromhex(spec.fingerprint()))


# FedAvgAccumulator keeps its state private; these two functions are the only place that reads or
# rebuilds it (qflare.fl has no export API yet; tests/enclave checks a restored accumulator against an
# uninterrupted one, so a change in fl.aggregate shows up there).
def _export_accumulator(acc: FedAvgAccumulator) -> tuple[NDArrays, int, int]:
    return dict(acc._sum), acc.count, acc.total_examples


def _import_accumulator(spec: ModelSpec, sums: NDArrays, count: int, total: int) -> FedAvgAccumulator:
    acc = FedAvgAccumulator(spec)
    acc._sum = {name: np.array(sums[name], dtype=np.float64, copy=True) for name in spec}
    acc._count = count
    acc._total_examples = total
    return acc


@dataclass
class RoundState:
    """A round being aggregated inside the enclave.

    Parameters
    ----------
    round_id:
        The round.
    spec:
        The model's tensors.
    base_sha256:
        Hex SHA-256 of the global model the round starts from.
    base:
        The base model's tensors, kept only when the norm bound needs them.
    """

    round_id: int
    spec: ModelSpec
    base_sha256: str
    base: NDArrays | None
    acc: FedAvgAccumulator = field(init=False)
    included: list[str] = field(default_factory=list)
    pending: OrderedDict[str, ParsedUpdate] = field(default_factory=OrderedDict)
    checkpointed_count: int = 0

    def __post_init__(self) -> None:
        self.acc = FedAvgAccumulator(self.spec)
        self._included_set: set[str] = set(self.included)

    @property
    def since_checkpoint(self) -> int:
        """Updates counted since the last checkpoint was taken."""
        return len(self.included) - self.checkpointed_count

    def counted(self, update_id: str) -> bool:
        """Whether ``update_id`` is already in the aggregate."""
        return update_id in self._included_set

    def hold(self, update_id: str, update: ParsedUpdate, *, limit: int) -> None:
        """Keep a validated update until ``accumulate``; drop the oldest beyond ``limit``."""
        self.pending[update_id] = update
        while len(self.pending) > limit:
            self.pending.popitem(last=False)

    def add(self, update_id: str, update: ParsedUpdate) -> None:
        """Count one update."""
        self.acc.add(update.arrays, update.num_examples)
        self.included.append(update_id)
        self._included_set.add(update_id)
        self.pending.pop(update_id, None)

    # -- checkpoints ----------------------------------------------------------------------------

    def checkpoint(self) -> tuple[bytes, bytes]:
        """``(public header, plaintext)`` of a checkpoint of the running aggregate.

        Plaintext: ``u32 len || JSON {count, total_examples, included}`` then every running sum as
        little-endian float64, in spec order (raw, so an 8 MB sum costs one copy, not a serialiser).
        """
        sums, count, total = _export_accumulator(self.acc)
        meta = json.dumps(
            {"count": count, "total_examples": total, "included": self.included}, separators=(",", ":")
        ).encode("ascii")
        parts: list[bytes | memoryview] = [struct.pack(">I", len(meta)), meta]
        parts += [np.ascontiguousarray(sums[name], dtype="<f8").data for name in self.spec]
        return checkpoint_header(self.round_id, self.base_sha256, self.spec), b"".join(parts)

    def restore(self, header: bytes, plaintext: bytes) -> None:
        """Load a checkpoint made by :meth:`checkpoint` for this same round, base model and spec."""
        if header != checkpoint_header(self.round_id, self.base_sha256, self.spec):
            raise InvalidInput("checkpoint belongs to another round or base model", reason="checkpoint_mismatch")
        bad = InvalidInput("checkpoint is inconsistent", reason="checkpoint_mismatch")
        (mlen,) = struct.unpack(">I", plaintext[:4])
        meta = json.loads(plaintext[4 : 4 + mlen])
        count, total, included = meta.get("count"), meta.get("total_examples"), meta.get("included")
        if not (isinstance(count, int) and isinstance(total, int) and isinstance(included, list)):
            raise bad
        if len(included) != count:
            raise bad
        sums: NDArrays = {}
        pos = 4 + mlen
        for name, tensor in self.spec.items():
            n = tensor.size * 8
            if pos + n > len(plaintext):
                raise bad
            sums[name] = np.frombuffer(plaintext, dtype="<f8", count=tensor.size, offset=pos).reshape(tensor.shape)
            pos += n
        if pos != len(plaintext):
            raise bad
        self.acc = _import_accumulator(self.spec, sums, count, total)
        self.included = [str(i) for i in included]
        self._included_set = set(self.included)
        self.checkpointed_count = len(self.included)
