"""Token buckets keyed by source address or device id: bounded memory, injectable clock, no I/O.

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a request takes one, and an
empty bucket refuses with :class:`~qflare.errors.RateLimited` carrying the wait until the next token.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from qflare.config import RateLimitConfig
from qflare.errors import RateLimited

MAX_KEYS = 10_000  # per limiter: the least recently seen keys are forgotten (a full bucket is the default)


class TokenBucketLimiter:
    """Per-key token buckets.

    Parameters
    ----------
    rate:
        Tokens added per second.
    burst:
        Bucket capacity (requests allowed at once after a quiet period).
    name:
        What is limited, for the refusal's message and reason (``rate_limited_<name>``).
    clock:
        Monotonic seconds; a parameter so that tests control time.
    """

    def __init__(self, rate: float, burst: float, *, name: str, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_KEYS) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self.name, self.clock, self.max_keys = rate, float(burst), name, clock, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def check(self, key: str) -> None:
        """Raise :class:`RateLimited` if ``key``'s bucket is empty (takes nothing)."""
        now = self.clock()
        with self._lock:
            tokens = self._level(key, now)
        if tokens < 1:
            raise RateLimited(f"too many {self.name} requests; retry later", reason=f"rate_limited_{self.name}",
                              retry_after=(1 - tokens) / self.rate)

    def take(self, key: str) -> None:
        """Take one token from ``key``'s bucket, or raise :class:`RateLimited` (taking nothing)."""
        now = self.clock()
        with self._lock:
            tokens = self._level(key, now)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                self._buckets.move_to_end(key)
                while len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
                return
        raise RateLimited(f"too many {self.name} requests; retry later", reason=f"rate_limited_{self.name}",
                          retry_after=(1 - tokens) / self.rate)

    def charge(self, key: str) -> None:
        """Take a token if there is one (a failure to account for; never raises)."""
        try:
            self.take(key)
        except RateLimited:
            pass


@dataclass
class RateLimits:
    """The server's limiters (``server.rate_limits`` in the config); ``None`` fields are off."""

    operator_failures: TokenBucketLimiter | None  # per source: wrong operator tokens
    enrollment: TokenBucketLimiter | None  # per source: self-enrollment attempts
    device_refusals: TokenBucketLimiter | None  # per source: device requests refused before opening
    device_requests: TokenBucketLimiter | None  # per authenticated device: every request


def source_of(client: tuple[str, int] | None) -> str:
    return client[0] if client else "unknown"


def build_rate_limits(cfg: RateLimitConfig, *, clock: Callable[[], float] = time.monotonic) -> RateLimits:
    if not cfg.enabled:
        return RateLimits(None, None, None, None)
    return RateLimits(
        operator_failures=TokenBucketLimiter(cfg.operator_failures_per_second, cfg.operator_failures_burst,
                                             name="operator_auth", clock=clock),
        enrollment=TokenBucketLimiter(cfg.enrollment_per_second, cfg.enrollment_burst, name="enrollment",
                                      clock=clock),
        device_refusals=TokenBucketLimiter(cfg.device_refusals_per_second, cfg.device_refusals_burst,
                                           name="device_refusals", clock=clock),
        device_requests=TokenBucketLimiter(cfg.device_requests_per_second, cfg.device_requests_burst,
                                           name="device_requests", clock=clock),
    )
