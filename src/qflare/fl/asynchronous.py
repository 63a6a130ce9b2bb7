"""Asynchronous buffered aggregation: FedBuff (Nguyen et al., 2022) with FedAsync staleness weights.

The server holds model version ``v``. A device trains on whatever version ``b`` it downloaded and
sends its update; the update's staleness is ``s = v - b``. An update with ``s > max_staleness`` is
refused (``too_stale``), one for a version that never existed is refused
(``unknown_model_version``); a refusal changes nothing. Accepted updates enter a buffer as deltas
``update - model[b]`` weighted by ``num_examples * (1 + s) ** -staleness_exponent`` (FedAsync's
polynomial staleness function, Xie et al., 2019). Every ``buffer`` accepted updates the server
publishes ``v + 1 = model[v] + server_lr * weighted_mean(deltas)`` and empties the buffer.

In the round vocabulary of :mod:`qflare.server.rounds`, version ``v``'s window accepts updates
computed on versions ``v - max_staleness .. v``; only those base models are kept.

Which robust rules apply to a buffer: the buffer is a set of deltas, so coordinate-wise rules
(median, trimmed mean) and norm bounding / centered clipping apply to it as they do to a round's
updates (pass ``rule``); distance-based rules (Krum, Multi-Krum, Bulyan) need ``buffer >= 2f + 3``
deltas and are not offered here. Rules that ignore weights drop the staleness weight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from qflare.errors import ConfigError, NotFound, UpdateRejected
from qflare.fl.spec import ModelSpec
from qflare.types import NDArrays

__all__ = ["ASYNC_RULES", "AsyncConfig", "BufferedUpdate", "FedBuffServer", "staleness_weight"]

ASYNC_RULES = ("fedavg", "median", "trimmed-mean", "norm-bound")


def staleness_weight(staleness: int, exponent: float) -> float:
    """FedAsync's polynomial weight ``(1 + s) ** -a``: 1 for a fresh update, smaller the staler."""
    if staleness < 0:
        raise ValueError("staleness must be >= 0")
    return float((1.0 + staleness) ** -exponent)


@dataclass(frozen=True)
class AsyncConfig:
    """Settings of asynchronous aggregation (``rounds.mode: async``).

    Parameters
    ----------
    buffer:
        Updates per published model (FedBuff's K).
    max_staleness:
        Updates computed more than this many versions ago are refused (``too_stale``).
    staleness_exponent:
        ``a`` in ``(1 + s) ** -a``; 0 weighs every accepted update alike.
    server_lr:
        FedBuff's server learning rate on the mean delta (1: the weighted mean of the updates).
    rule:
        How a full buffer is combined (:data:`ASYNC_RULES`).
    max_delta_norm:
        For ``norm-bound``: deltas are scaled down to this L2 norm.
    """

    buffer: int = 10
    max_staleness: int = 10
    staleness_exponent: float = 0.5
    server_lr: float = 1.0
    rule: str = "fedavg"
    max_delta_norm: float | None = None

    def check(self, num_devices: int) -> None:
        """Refuse settings that cannot work for ``num_devices`` devices (``ConfigError``)."""
        if self.buffer < 1:
            raise ConfigError(f"async buffer must be >= 1, got {self.buffer}", reason="invalid_config")
        if self.buffer > num_devices:
            raise ConfigError(f"async buffer {self.buffer} exceeds the {num_devices} devices: the first model "
                              "would need more updates than there are devices in one version window",
                              reason="buffer_exceeds_devices")
        if self.max_staleness < 0 or self.staleness_exponent < 0 or self.server_lr <= 0:
            raise ConfigError("max_staleness and staleness_exponent must be >= 0, server_lr > 0",
                              reason="invalid_config")
        if self.rule not in ASYNC_RULES:
            raise ConfigError(f"async rule {self.rule!r} is not one of {', '.join(ASYNC_RULES)}",
                              reason="invalid_config")
        if self.rule == "norm-bound" and not self.max_delta_norm:
            raise ConfigError("async rule norm-bound needs max_delta_norm", reason="invalid_config")


@dataclass(frozen=True)
class BufferedUpdate:
    """What the server recorded for one accepted update."""

    device_id: str
    base_version: int
    staleness: int
    weight: float
    published: int | None = None  # the version this update completed, if it filled the buffer


@dataclass
class FedBuffServer:
    """The server side of FedBuff: versions, the buffer, staleness checks. Pure numpy, no I/O.

    ``on_publish(version, arrays)`` is called for each new model (evaluation, persistence).
    """

    initial: NDArrays
    config: AsyncConfig
    spec: ModelSpec | None = None
    on_publish: Callable[[int, NDArrays], None] | None = None
    version: int = 0
    _models: dict[int, NDArrays] = field(default_factory=dict)
    _deltas: list[tuple[dict[str, np.ndarray], float]] = field(default_factory=list)
    accepted: list[BufferedUpdate] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._models[0] = {k: np.array(v, copy=True) for k, v in self.initial.items()}

    def model(self, version: int | None = None) -> NDArrays:
        """The model of ``version`` (default: the latest), if still in the staleness window."""
        v = self.version if version is None else version
        if v not in self._models:
            raise NotFound(f"model version {v} is not available", reason="unknown_model_version")
        return self._models[v]

    def submit(self, device_id: str, base_version: int, arrays: NDArrays, num_examples: int) -> BufferedUpdate:
        """Accept one update computed on ``base_version`` or raise; a refusal changes nothing."""
        if base_version < 0 or base_version > self.version:
            self.refused["unknown_model_version"] = self.refused.get("unknown_model_version", 0) + 1
            raise NotFound(f"update from {device_id} names model version {base_version}, which never existed "
                           f"(latest {self.version})", reason="unknown_model_version")
        staleness = self.version - base_version
        if staleness > self.config.max_staleness or base_version not in self._models:
            self.refused["too_stale"] = self.refused.get("too_stale", 0) + 1
            raise UpdateRejected(f"update from {device_id} was computed on version {base_version}, {staleness} "
                                 f"versions old (max_staleness {self.config.max_staleness})", reason="too_stale")
        if num_examples <= 0:
            raise UpdateRejected("num_examples must be > 0", reason="invalid_num_examples")
        if self.spec is not None:
            self.spec.validate(arrays)
        base = self._models[base_version]
        delta = {k: np.asarray(arrays[k], dtype=np.float64) - base[k] for k in base}
        if any(not np.isfinite(d).all() for d in delta.values()):
            raise UpdateRejected(f"update from {device_id} has non-finite values", reason="non_finite")
        weight = num_examples * staleness_weight(staleness, self.config.staleness_exponent)
        self._deltas.append((delta, weight))
        published = self._publish() if len(self._deltas) >= self.config.buffer else None
        record = BufferedUpdate(device_id, base_version, staleness, weight, published)
        self.accepted.append(record)
        return record

    def _combine(self) -> dict[str, np.ndarray]:
        deltas = [d for d, _ in self._deltas]
        weights = np.array([w for _, w in self._deltas])
        rule = self.config.rule
        if rule == "norm-bound":
            bound = float(self.config.max_delta_norm or 0)
            scaled = []
            for d in deltas:
                norm = float(np.sqrt(sum(float((x * x).sum()) for x in d.values())))
                scaled.append({k: x * min(1.0, bound / norm) if norm > 0 else x for k, x in d.items()})
            deltas = scaled
        out = {}
        for k in deltas[0]:
            stack = np.stack([d[k] for d in deltas])
            if rule == "median":
                out[k] = np.median(stack, axis=0)
            elif rule == "trimmed-mean":
                cut = max(1, len(deltas) // 10) if len(deltas) > 2 else 0
                srt = np.sort(stack, axis=0)
                out[k] = srt[cut:len(deltas) - cut].mean(axis=0)
            else:
                out[k] = np.tensordot(weights / weights.sum(), stack, axes=1)
        return out

    def _publish(self) -> int:
        mean = self._combine()
        current = self._models[self.version]
        new = {k: (current[k] + self.config.server_lr * mean[k]).astype(current[k].dtype) for k in current}
        self.version += 1
        self._models[self.version] = new
        self._deltas.clear()
        for v in [v for v in self._models if v < self.version - self.config.max_staleness]:
            del self._models[v]  # outside every future window: updates on it are too stale anyway
        if self.on_publish is not None:
            self.on_publish(self.version, new)
        return self.version
