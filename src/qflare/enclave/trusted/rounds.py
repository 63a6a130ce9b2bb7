"""One round's state inside the enclave: the configured rule's accumulator, the updates it counts, and
its sealed checkpoint.

Every update gets a random 16-byte id when it is validated. The id travels in the public header of
the stored update (:mod:`qflare.enclave.stored`), so the host can tell its stored updates apart;
the enclave counts each id at most once per round, so the host cannot double-count an update by
replaying it. A checkpoint seals the accumulator's public state (:meth:`Accumulator.state`: its
tensors, count, total number of examples and buffered weights) and the ids counted so far.
"""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from qflare.errors import DuplicateUpdate, InvalidInput, QFlareError
from qflare.fl.aggregate import Accumulator, AccumulatorState
from qflare.fl.checks import ParsedUpdate
from qflare.fl.spec import ModelSpec
from qflare.fl.strategies import Strategy, get_strategy
from qflare.types import NDArrays

__all__ = ["CHECKPOINT_PURPOSE", "RoundState", "checkpoint_header"]

CHECKPOINT_PURPOSE: Final = "round-checkpoint"
_CKPT_HEADER: Final = struct.Struct(">4sQ32s32s")
_CKPT_MAGIC: Final = b"QFCP"
_F32: Final = "<f4"
_F64: Final = "<f8"


def checkpoint_header(round_id: int, base_sha256: str, spec: ModelSpec) -> bytes:
    """The public header of a checkpoint: which round, base model and spec it belongs to."""
    return _CKPT_HEADER.pack(_CKPT_MAGIC, round_id, bytes.fromhex(base_sha256), bytes.fromhex(spec.fingerprint()))


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
        The base model's tensors (each update's step norm is measured from them; the rule gets them
        only if it needs a reference).
    strategy:
        The configured aggregation rule (measured with the enclave's configuration).
    """

    round_id: int
    spec: ModelSpec
    base_sha256: str
    base: NDArrays | None
    strategy: Strategy = field(default_factory=lambda: get_strategy("fedavg"))
    acc: Accumulator = field(init=False)
    included: list[str] = field(default_factory=list)
    pending: OrderedDict[str, ParsedUpdate] = field(default_factory=OrderedDict)
    checkpointed_count: int = 0
    # Header hashes of the update envelopes validated or replayed in this round.
    seen_envelopes: set[bytes] = field(default_factory=set)
    # Per counted update (same order as ``included``): the device that sent it (``None`` for a plaintext
    # update, whose sender the enclave does not know) and its sample count: the aggregate's participants.
    participants: list[tuple[str | None, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.acc = self.strategy.accumulator(self.spec, reference=self._rule_reference)
        self._included_set: set[str] = set(self.included)
        self._devices: set[str] = {d for d, _ in self.participants if d is not None}
        self._pending_devices: dict[str, str | None] = {}

    @property
    def since_checkpoint(self) -> int:
        """Updates counted since the last checkpoint was taken."""
        return len(self.included) - self.checkpointed_count

    @property
    def _rule_reference(self) -> NDArrays | None:
        """The base model for a rule that measures steps from it; other rules get none (the base is then
        kept only to report each update's norm)."""
        return self.base if self.strategy.needs_reference else None

    def counted(self, update_id: str) -> bool:
        """Whether ``update_id`` is already in the aggregate."""
        return update_id in self._included_set

    def envelope_seen(self, header_hash: bytes) -> bool:
        """Whether an update envelope with this header hash was already validated in this round."""
        return header_hash in self.seen_envelopes

    def hold(self, update_id: str, update: ParsedUpdate, *, limit: int, device_id: str | None = None) -> None:
        """Keep a validated update (of ``device_id``) until ``accumulate``; drop the oldest beyond ``limit``."""
        self.pending[update_id] = update
        self._pending_devices[update_id] = device_id
        while len(self.pending) > limit:
            gone, _ = self.pending.popitem(last=False)
            self._pending_devices.pop(gone, None)

    def pending_device(self, update_id: str) -> str | None:
        """The device of a held update (``None``: unknown, a plaintext update)."""
        return self._pending_devices.get(update_id)

    def has_device(self, device_id: str) -> bool:
        """Whether an update of ``device_id`` is already counted in this round."""
        return device_id in self._devices

    def add(self, update_id: str, update: ParsedUpdate, device_id: str | None = None) -> None:
        """Count one update (of ``device_id``: at most one per device and round).

        Raises
        ------
        qflare.errors.DuplicateUpdate
            ``enclave_duplicate_device``: that device's update is already counted.
        """
        if device_id is not None and device_id in self._devices:
            raise DuplicateUpdate(f"an update of device {device_id!r} is already counted in round {self.round_id}",
                                  reason="enclave_duplicate_device")
        self.acc.add(update.arrays, update.num_examples, finite_checked=True)  # parse_update checked them
        self.included.append(update_id)
        self._included_set.add(update_id)
        self.participants.append((device_id, update.num_examples))
        if device_id is not None:
            self._devices.add(device_id)
        self.pending.pop(update_id, None)
        self._pending_devices.pop(update_id, None)

    # -- checkpoints ----------------------------------------------------------------------------

    def checkpoint(self) -> tuple[bytes, bytes]:
        """``(public header, plaintext)`` of a checkpoint of the running aggregate.

        Plaintext: ``u32 len || JSON {count, total_examples, weights, included, names, shapes, dtypes}``
        then every tensor of :meth:`Accumulator.state` raw, in ``names`` order: little-endian float32 if
        it is float32 (a buffered update, a partial sum), else float64 (raw, so an 8 MB sum costs one
        copy, not a serialiser).
        """
        st = self.acc.state(copy=False)  # views: joined into the plaintext below, before any other add
        names = list(st.arrays)
        dtypes = [_F32 if st.arrays[n].dtype == np.float32 else _F64 for n in names]
        meta = json.dumps(
            {"count": st.count, "total_examples": st.total_examples, "weights": list(st.weights),
             "included": self.included, "participants": [list(p) for p in self.participants],
             "names": names, "shapes": [list(st.arrays[n].shape) for n in names], "dtypes": dtypes},
            separators=(",", ":"),
        ).encode("ascii")
        parts: list[bytes | memoryview] = [struct.pack(">I", len(meta)), meta]
        parts += [np.ascontiguousarray(st.arrays[name], dtype=dt).data for name, dt in zip(names, dtypes, strict=True)]
        return checkpoint_header(self.round_id, self.base_sha256, self.spec), b"".join(parts)

    def restore(self, header: bytes, plaintext: bytes) -> None:
        """Load a checkpoint made by :meth:`checkpoint` for this same round, base model and spec."""
        if header != checkpoint_header(self.round_id, self.base_sha256, self.spec):
            raise InvalidInput("checkpoint belongs to another round or base model", reason="checkpoint_mismatch")
        bad = InvalidInput("checkpoint is inconsistent", reason="checkpoint_mismatch")
        try:
            (mlen,) = struct.unpack(">I", plaintext[:4])
            meta = json.loads(plaintext[4 : 4 + mlen])
            count, total, included = meta["count"], meta["total_examples"], meta["included"]
            names, shapes, weights = meta["names"], meta["shapes"], meta["weights"]
            dtypes = meta.get("dtypes", [_F64] * len(names))  # a checkpoint from before dtypes: all float64
            participants = [(None if d is None else str(d), int(n)) for d, n in meta["participants"]]
        except (struct.error, ValueError, KeyError, TypeError):
            raise bad from None
        if not (isinstance(count, int) and isinstance(total, int) and isinstance(included, list)):
            raise bad
        if len(included) != count or len(participants) != count or not len(names) == len(shapes) == len(dtypes):
            raise bad
        if not all(dt in (_F32, _F64) for dt in dtypes):
            raise bad
        arrays: NDArrays = {}
        pos = 4 + mlen
        for name, shape, dt in zip(names, shapes, dtypes, strict=True):
            size = int(np.prod(shape, dtype=np.int64))
            n = size * np.dtype(dt).itemsize
            if pos + n > len(plaintext):
                raise bad
            arrays[str(name)] = np.frombuffer(plaintext, dtype=dt, count=size, offset=pos).reshape(shape)
            pos += n
        if pos != len(plaintext):
            raise bad
        state = AccumulatorState(count=count, total_examples=total, arrays=arrays,
                                 weights=tuple(int(w) for w in weights))
        try:
            self.acc = self.strategy.accumulator(self.spec, reference=self._rule_reference).from_state(state)
        except QFlareError:
            raise bad from None
        self.included = [str(i) for i in included]
        self._included_set = set(self.included)
        self.participants = participants
        self._devices = {d for d, _ in participants if d is not None}
        self.checkpointed_count = len(self.included)
