"""Key store of a simulated KME pair, and the BB84 link that fills it. No HTTP here.

Design: one process hosts both ends of a KME pair (``KME-A`` and ``KME-B``), each behind its own
HTTPS listener (:mod:`qflare.kme`). They share one :class:`KeyStore`, which stands in for the
quantum link plus the KME-to-KME synchronisation of a real deployment: :class:`BB84Link` runs the BB84
simulator and appends each distilled key to the store's pool; a master SAE's ``enc_keys`` request
carves keys out of the pool and records them as *issued* for one (master, slave) pair; the slave
SAE's ``dec_keys`` request releases each issued key exactly once, after which its material is wiped
and only a tombstone of its ``key_ID`` is kept, so a replay is refused as ``key_id_reused``.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from qflare.errors import ConfigError, QKDError
from qflare.qkd.bb84 import BB84Result, run_bb84
from qflare.qkd.channel import Channel

__all__ = ["BB84Link", "KeyStore", "KeyStoreLimits", "KeyStoreStatus", "LinkStats", "QKDKey"]


class QKDKey(NamedTuple):
    """A delivered key: its ETSI ``key_ID`` (a UUID string) and its bytes."""

    key_id: str
    key: bytes

    def __repr__(self) -> str:  # never print key material
        return f"QKDKey(key_id={self.key_id!r}, key=<{len(self.key)} bytes>)"


@dataclass(frozen=True)
class KeyStoreLimits:
    """Limits advertised in the ETSI status response (sizes in bits, multiples of 8).

    Parameters
    ----------
    key_size:
        Default key size.
    min_key_size, max_key_size:
        Allowed key sizes per request.
    max_key_per_request:
        Most keys in one ``enc_keys`` request.
    max_key_count:
        Pool capacity, counted in keys of ``key_size``.
    max_issued:
        Most keys issued to masters but not yet fetched by slaves (bounds memory).
    """

    key_size: int = 256
    min_key_size: int = 64
    max_key_size: int = 1024
    max_key_per_request: int = 128
    max_key_count: int = 100_000
    max_issued: int = 100_000

    def __post_init__(self) -> None:
        sizes = (self.key_size, self.min_key_size, self.max_key_size)
        if any(s <= 0 or s % 8 for s in sizes) or not self.min_key_size <= self.key_size <= self.max_key_size:
            raise ConfigError("key sizes must be positive multiples of 8, min <= default <= max", reason="kme_limits")
        if self.max_key_per_request < 1 or self.max_key_count < 1 or self.max_issued < 1:
            raise ConfigError("KME counts must be >= 1", reason="kme_limits")

    @property
    def capacity_bytes(self) -> int:
        return self.max_key_count * self.key_size // 8


@dataclass(frozen=True)
class KeyStoreStatus:
    """A snapshot for the ETSI status response."""

    stored_key_count: int
    stored_bytes: int
    issued_pending: int
    delivered: int


@dataclass(frozen=True)
class LinkStats:
    """What the quantum link feeding a store has done (served in the ETSI status's ``status_extension``).

    ``qber`` and ``key_bits_per_pulse`` are those of the last frame (its estimated QBER: the disclosed
    sample's error rate, what a real link knows); ``aborted_frames`` counts frames that gave no key.
    """

    frames: int = 0
    aborted_frames: int = 0
    qber: float | None = None
    qber_abort: float | None = None
    key_bits_per_pulse: float | None = None
    distilled_key_bits: int = 0
    pulses: int = 0
    last_abort_reason: str | None = None

    def as_extension(self) -> dict[str, Any]:
        """The ``qflare_link`` object of ``status_extension``."""
        return {
            "frames": self.frames, "aborted_frames": self.aborted_frames, "qber": self.qber,
            "qber_abort": self.qber_abort, "key_bits_per_pulse": self.key_bits_per_pulse,
            "distilled_key_bits": self.distilled_key_bits, "pulses": self.pulses,
            "last_abort_reason": self.last_abort_reason,
        }


@dataclass
class _Issued:
    key: bytes
    master: str
    slave: str


@dataclass
class KeyStore:
    """Thread-safe key pool shared by both ends of a KME pair.

    Parameters
    ----------
    limits:
        Sizes and counts (see :class:`KeyStoreLimits`).
    """

    limits: KeyStoreLimits = field(default_factory=KeyStoreLimits)
    _pool: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _issued: dict[str, _Issued] = field(default_factory=dict, init=False, repr=False)
    _spent: OrderedDict[str, None] = field(default_factory=OrderedDict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _delivered: int = field(default=0, init=False)
    _link: LinkStats | None = field(default=None, init=False)

    def add_material(self, material: bytes) -> int:
        """Append distilled key bytes (up to capacity). Returns the bytes accepted."""
        with self._lock:
            room = self.limits.capacity_bytes - len(self._pool)
            accepted = max(0, min(room, len(material)))
            self._pool += material[:accepted]
            return accepted

    def record_frame(self, result: BB84Result, *, qber_abort: float | None = None) -> None:
        """Count one frame of the link that feeds this store (its QBER, key length, abort)."""
        with self._lock:
            prev = self._link or LinkStats()
            self._link = LinkStats(
                frames=prev.frames + 1,
                aborted_frames=prev.aborted_frames + int(result.aborted),
                qber=float(result.qber_estimated),
                qber_abort=qber_abort,
                key_bits_per_pulse=float(result.key_rate),
                distilled_key_bits=prev.distilled_key_bits + result.final_key_bits,
                pulses=prev.pulses + result.pulses,
                last_abort_reason=result.abort_reason if result.aborted else prev.last_abort_reason,
            )

    def link_stats(self) -> LinkStats | None:
        """The link's statistics, or ``None`` when no frame was recorded (keys added by hand)."""
        with self._lock:
            return self._link

    def status(self) -> KeyStoreStatus:
        with self._lock:
            return KeyStoreStatus(
                stored_key_count=len(self._pool) * 8 // self.limits.key_size,
                stored_bytes=len(self._pool),
                issued_pending=len(self._issued),
                delivered=self._delivered,
            )

    def _check_size(self, size: int) -> None:
        lim = self.limits
        if size % 8 or not lim.min_key_size <= size <= lim.max_key_size:
            raise QKDError(
                f"key size {size} bits: must be a multiple of 8 in [{lim.min_key_size}, {lim.max_key_size}]",
                reason="key_size",
            )

    def issue(self, master: str, slave: str, number: int, size: int) -> list[QKDKey]:
        """Carve ``number`` keys of ``size`` bits for ``master`` to share with ``slave`` (enc_keys).

        Raises
        ------
        QKDError
            ``key_size`` (bad size), ``key_number`` (bad count), ``out_of_key`` (pool too small or
            too many keys awaiting their slave).
        """
        self._check_size(size)
        if not 1 <= number <= self.limits.max_key_per_request:
            raise QKDError(f"number of keys must be in [1, {self.limits.max_key_per_request}]", reason="key_number")
        need = number * size // 8
        with self._lock:
            if len(self._pool) < need:
                raise QKDError(
                    f"KME holds {len(self._pool) * 8} key bits, request needs {need * 8}", reason="out_of_key"
                )
            if len(self._issued) + number > self.limits.max_issued:
                raise QKDError("too many keys await their slave SAE", reason="out_of_key")
            chunk = bytes(self._pool[:need])
            # Wipe the consumed pool bytes before dropping them.
            self._pool[:need] = bytes(need)
            del self._pool[:need]
            step = size // 8
            keys = []
            for i in range(number):
                key_id = str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))
                material = chunk[i * step : (i + 1) * step]
                self._issued[key_id] = _Issued(material, master, slave)
                keys.append(QKDKey(key_id, material))
            return keys

    def release(self, master: str, slave: str, key_ids: Sequence[str]) -> list[QKDKey]:
        """Hand the keys ``key_ids`` (issued to ``master`` for ``slave``) to ``slave``, once (dec_keys).

        All or nothing: if any ID is refused, none is released.

        Raises
        ------
        QKDError
            ``key_id_reused`` (already delivered, or listed twice), ``unknown_key_id`` (never issued),
            ``sae_not_authorised`` (issued for another SAE pair), ``key_number`` (empty or too many).
        """
        if not 1 <= len(key_ids) <= self.limits.max_key_per_request:
            raise QKDError(f"number of key_IDs must be in [1, {self.limits.max_key_per_request}]", reason="key_number")
        with self._lock:
            seen: set[str] = set()
            for key_id in key_ids:
                if key_id in self._spent or key_id in seen:
                    raise QKDError(f"key_ID {key_id} was already delivered", reason="key_id_reused")
                seen.add(key_id)
                issued = self._issued.get(key_id)
                if issued is None:
                    raise QKDError(f"key_ID {key_id} is unknown", reason="unknown_key_id")
                if issued.master != master or issued.slave != slave:
                    raise QKDError(f"key_ID {key_id} was not issued for this SAE pair", reason="sae_not_authorised")
            out = []
            for key_id in key_ids:
                issued = self._issued.pop(key_id)
                out.append(QKDKey(key_id, issued.key))
                self._spent[key_id] = None
                self._delivered += 1
            while len(self._spent) > 4 * self.limits.max_issued:  # bounded tombstones (UUIDv4 never repeat)
                self._spent.popitem(last=False)
            return out


class BB84Link:
    """The simulated quantum link between the two KMEs: BB84 frames feeding a :class:`KeyStore`.

    Parameters
    ----------
    store:
        Pool to fill.
    channel:
        Fibre and detector model.
    pulses_per_frame:
        Pulses per BB84 run (one run distils one key block).
    eavesdrop:
        Fraction of pulses an intercept-resend eavesdropper attacks.
    seed:
        Seed of the first frame (frame ``i`` uses ``seed + i``); fresh entropy per frame when ``None``.
    """

    def __init__(
        self,
        store: KeyStore,
        channel: Channel | None = None,
        *,
        pulses_per_frame: int = 2_000_000,
        eavesdrop: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if pulses_per_frame < 1:
            raise ConfigError("pulses_per_frame must be >= 1", reason="invalid_pulses")
        self.store = store
        self.channel = channel or Channel()
        self.pulses_per_frame = pulses_per_frame
        self.eavesdrop = eavesdrop
        self.seed = seed
        self.qber_abort = 0.11  # run_bb84's threshold, reported with each frame's QBER
        self.frames = 0
        self.last: BB84Result | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_frame(self) -> BB84Result:
        """Run one BB84 session and store its key (nothing is stored if it aborted)."""
        seed = None if self.seed is None else self.seed + self.frames
        result = run_bb84(self.pulses_per_frame, self.channel, eavesdrop=self.eavesdrop, seed=seed,
                          qber_abort=self.qber_abort)
        self.frames += 1
        self.last = result
        self.store.record_frame(result, qber_abort=self.qber_abort)
        if not result.aborted:
            self.store.add_material(result.key)
        return result

    def fill(self, target_bytes: int, *, max_frames: int = 1000, max_aborts: int = 3) -> int:
        """Run frames until the pool holds ``target_bytes`` (or capacity). Returns frames run.

        Stops early after ``max_aborts`` aborted frames in a row (a link under attack yields no key:
        the KME then answers ``out_of_key``); ``self.last`` tells why.
        """
        target = min(target_bytes, self.store.limits.capacity_bytes)
        runs = 0
        aborted_in_a_row = 0
        while self.store.status().stored_bytes < target and runs < max_frames and aborted_in_a_row < max_aborts:
            result = self.run_frame()
            runs += 1
            aborted_in_a_row = aborted_in_a_row + 1 if result.aborted else 0
        return runs

    def start(self, *, low_water_bytes: int, interval_s: float = 0.5) -> None:
        """Top the pool up in a background thread whenever it falls below ``low_water_bytes``."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.is_set():
                if self.store.status().stored_bytes < low_water_bytes:
                    self.run_frame()
                else:
                    self._stop.wait(interval_s)

        self._thread = threading.Thread(target=loop, name="qkd-bb84-link", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
