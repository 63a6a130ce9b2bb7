"""Operator accounts, login throttling and dashboard sessions.

Accounts live in a JSON file (``qflare operator add``; by default ``.qflare/operators.json``, mode 0600):
``{"operators": {"alice": "scrypt$15$8$1$..."}}``. There is no default account and no default password;
the operator token also opens the dashboard. Failed logins are counted per client address and per
name: after ``max_failures`` within ``window_seconds`` every further attempt from that address or
for that name is answered 429 until the window has passed, right or wrong.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qflare.crypto.passwords import DUMMY_HASH, hash_password, verify_password
from qflare.errors import AuthenticationError, ConfigError, RateLimited

__all__ = ["LoginLimiter", "OperatorAccounts", "Session", "SessionStore"]

NAME = re.compile(r"[a-z][a-z0-9_.-]{0,31}")


class OperatorAccounts:
    """Named operators with scrypt-hashed passwords, in a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._hashes: dict[str, str] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self._hashes = {str(k): str(v) for k, v in data.get("operators", {}).items()}
            except (ValueError, AttributeError) as exc:
                raise ConfigError(f"{path}: not an operators file ({exc})", reason="bad_operators_file") from None

    def names(self) -> list[str]:
        return sorted(self._hashes)

    def add(self, name: str, password: str) -> None:
        if not NAME.fullmatch(name):
            raise ConfigError(f"operator name {name!r}: 1-32 of a-z, 0-9, '_', '.', '-', starting with a letter",
                              reason="bad_option")
        self._hashes[name] = hash_password(password)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"operators": self._hashes}, fh, indent=2, sort_keys=True)
        os.replace(tmp, self.path)

    def verify(self, name: str, password: str) -> None:
        """``None`` or :class:`AuthenticationError`; an unknown name costs the same time as a known one."""
        verify_password(password, self._hashes.get(name, DUMMY_HASH))
        if name not in self._hashes:  # pragma: no cover - DUMMY_HASH matches no password
            raise AuthenticationError("wrong operator name or password", reason="bad_credentials")


class LoginLimiter:
    """Failures per key (address, name) in a sliding window."""

    def __init__(self, *, max_failures: int = 5, window_seconds: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures, self.window, self.clock = max_failures, window_seconds, clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def check(self, *keys: str) -> None:
        """:class:`RateLimited` (``too_many_failures``) if any key has used up its failures."""
        now = self.clock()
        with self._lock:
            for key in keys:
                q = self._recent(key, now)
                if len(q) >= self.max_failures:
                    wait = q[0] + self.window - now
                    raise RateLimited(f"too many failed logins; try again in {wait:.0f} s", reason="too_many_failures",
                                      retry_after=wait)

    def failed(self, *keys: str) -> None:
        now = self.clock()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)


@dataclass(frozen=True)
class Session:
    operator: str
    expires_at: float
    csrf: str


class SessionStore:
    """Server-side sessions: the cookie holds only a random id."""

    def __init__(self, *, ttl_seconds: float = 8 * 3600, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl_seconds, clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, operator: str) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(operator, self.clock() + self.ttl, secrets.token_urlsafe(16))
        with self._lock:
            self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._sessions.get(sid)
            if s is not None and s.expires_at <= self.clock():
                del self._sessions[sid]
                return None
            return s

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)
