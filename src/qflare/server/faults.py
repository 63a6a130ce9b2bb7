"""UNSAFE, for crash tests only: SIGKILL this process at a named step (``QFLARE_UNSAFE_CRASH_AT``).

``QFLARE_UNSAFE_CRASH_AT=after_commit@3`` kills the server right after the third update's database
commit, before anything else (the close of a full round included); ``before_ledger_append@3`` after that
update was counted, before its audit entry leaves the ledger outbox; ``during_aggregation`` right after
the backend produced the new model; ``during_model_write`` just before the close (model, metrics, audit
entries) is committed. Unset (always, outside tests) it does nothing.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

from qflare.environment import UNSAFE_CRASH_AT_ENV, environment

ENV = UNSAFE_CRASH_AT_ENV
_SPEC = environment().unsafe_crash_at
_seen: Counter[str] = Counter()


def crash_point(name: str) -> None:
    if not _SPEC:
        return
    point, _, nth = _SPEC.partition("@")
    if point != name:
        return
    _seen[name] += 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
