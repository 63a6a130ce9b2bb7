"""The enclave's device registry on untrusted storage: a sealed snapshot and a sealed append-only journal.

Rewriting the whole sealed registry at every change costs O(devices) per enrolment, so registering a
fleet of n devices cost O(n^2): at 1,000 devices the rewrite was a quarter of the enclave's time in a
round. Here a change appends one sealed record (O(1)); the snapshot is rewritten only when the journal
holds as many records as the registry has devices (at least :data:`MIN_COMPACT_RECORDS`), which keeps the
amortised cost per change O(1) and the journal no longer than the snapshot.

Layout (``tag`` is the enclave's measurement prefix, ``epoch`` 16 random bytes per snapshot)::

    registry-<tag>.sealed            seal({"epoch": hex, "devices": [registration, ...]})
    registry-<tag>-<epoch>.journal   (4-byte big-endian length || seal(registration, header=epoch || index))*

Each journal record is bound by its authenticated sealed header to its snapshot's epoch and to its
position, so the host can neither reorder, duplicate nor drop records from the middle, nor graft one
snapshot's journal onto another: such a journal refuses to open (``unseal_failed``). An incomplete last
record (a crash mid-append, before the call was answered; the host re-sends it) is dropped on load and
the store compacted. Dropping complete records from the end, or putting back an older snapshot, is a
rollback, which sealing alone cannot stop (``docs/enclave.md``, "Not protected even on SGX").
"""

from __future__ import annotations

import json
import os
import secrets
import struct
from pathlib import Path
from typing import Final

from qflare.enclave.registry import DeviceRegistration, DeviceRegistry
from qflare.enclave.sealing import SealingKey
from qflare.enclave.trusted.storage import MAX_STATE_FILE, read_file, remove_file, write_atomic
from qflare.errors import CryptoError, EnclaveError, InvalidInput

__all__ = ["MIN_COMPACT_RECORDS", "SNAPSHOT_PURPOSE", "SealedRegistryStore"]

SNAPSHOT_PURPOSE: Final = "device-registry"
_JOURNAL_PURPOSE: Final = "device-registry-journal"
MIN_COMPACT_RECORDS: Final = 64
_EPOCH_SIZE: Final = 16
_LENGTH: Final = struct.Struct(">I")
_MAX_RECORD: Final = 1 << 20  # one registration is about 4 KB


def _unreadable(what: str) -> EnclaveError:
    return EnclaveError(f"sealed device registry {what}", reason="unseal_failed")


class SealedRegistryStore:
    """Persists one :class:`DeviceRegistry` for one enclave identity under ``state_dir``.

    Parameters
    ----------
    sealing:
        The enclave's sealing key.
    state_dir:
        The enclave's state directory (untrusted storage).
    tag:
        The file-name tag of this enclave identity.
    """

    def __init__(self, sealing: SealingKey, state_dir: Path, tag: str) -> None:
        self._sealing = sealing
        self._dir = state_dir
        self._tag = tag
        self._epoch = b""
        self._records = 0

    @property
    def snapshot_path(self) -> Path:
        """The sealed snapshot's path (its absence next to existing keys means the host removed it)."""
        return self._dir / f"registry-{self._tag}.sealed"

    def _journal_path(self, epoch: bytes) -> Path:
        return self._dir / f"registry-{self._tag}-{epoch.hex()}.journal"

    @property
    def journal_records(self) -> int:
        """Records in the current journal (changes since the last snapshot)."""
        return self._records

    def save(self, registry: DeviceRegistry) -> None:
        """Write ``registry`` as a new snapshot (a fresh epoch, an empty journal) and drop the old journal."""
        old = self._epoch
        epoch = secrets.token_bytes(_EPOCH_SIZE)
        body = json.dumps({"epoch": epoch.hex(), "devices": registry.statements()}, separators=(",", ":"))
        write_atomic(self.snapshot_path, self._sealing.seal(body.encode("ascii"), purpose=SNAPSHOT_PURPOSE))
        self._epoch, self._records = epoch, 0
        if old:
            remove_file(self._journal_path(old))

    def append(self, registry: DeviceRegistry, registration: DeviceRegistration) -> None:
        """Record one change already applied to ``registry`` (compacting when the journal has grown)."""
        if not self._epoch or self._records >= max(MIN_COMPACT_RECORDS, len(registry)):
            self.save(registry)
            return
        header = self._epoch + self._records.to_bytes(8, "big")
        sealed = self._sealing.seal(registration.to_bytes(), purpose=_JOURNAL_PURPOSE, header=header)
        record = _LENGTH.pack(len(sealed)) + sealed
        fd = os.open(self._journal_path(self._epoch), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            try:
                written = os.write(fd, record)  # one write: a crash leaves a short tail at worst
            except OSError:
                written = -1
            if written != len(record):  # a full disk: take the part back, so later records stay aligned
                os.ftruncate(fd, size)
                raise EnclaveError("the device registry's journal could not be written (disk full?)",
                                   reason="enclave_storage_failed")
        finally:
            os.close(fd)
        self._records += 1

    def load(self) -> DeviceRegistry | None:
        """The registry from disk, or ``None`` when there is no snapshot.

        Raises
        ------
        EnclaveError
            ``unseal_failed``: the snapshot or a complete journal record does not open, is out of place
            or does not apply.
        """
        blob = read_file(self.snapshot_path, max_size=MAX_STATE_FILE)
        if blob is None:
            return None
        try:
            _, data = self._sealing.unseal(blob, purpose=SNAPSHOT_PURPOSE)
        except CryptoError as exc:
            raise EnclaveError(f"sealed enclave state does not open: {exc.message}", reason="unseal_failed") from None
        try:
            loaded = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise _unreadable("snapshot is malformed") from None
        if isinstance(loaded, list):  # sealed before the journal existed: no epoch, no journal
            registry, epoch = self._registry_from(loaded), b""
        elif isinstance(loaded, dict) and set(loaded) == {"epoch", "devices"} and isinstance(loaded["epoch"], str):
            registry = self._registry_from(loaded["devices"])
            try:
                epoch = bytes.fromhex(loaded["epoch"])
            except ValueError:
                raise _unreadable("snapshot is malformed") from None
        else:
            raise _unreadable("snapshot is malformed")
        complete, records = self._replay(registry, epoch) if epoch else (True, 0)
        self._epoch, self._records = epoch, records
        self._drop_stale_journals(keep=epoch)
        if not complete or not epoch:
            self.save(registry)  # repair a torn tail (or move an old snapshot to the journal layout)
        return registry

    @staticmethod
    def _registry_from(items: object) -> DeviceRegistry:
        try:
            return DeviceRegistry.from_statements(items)
        except InvalidInput:
            raise _unreadable("snapshot is malformed") from None

    def _replay(self, registry: DeviceRegistry, epoch: bytes) -> tuple[bool, int]:
        """Apply the journal of ``epoch``: ``(complete, records applied)``; not complete when it ends in
        an incomplete record."""
        data = read_file(self._journal_path(epoch), max_size=MAX_STATE_FILE)
        if data is None:
            return True, 0
        view, pos, count = memoryview(data), 0, 0
        while pos < len(data):
            if len(data) - pos < _LENGTH.size:
                return False, count
            (size,) = _LENGTH.unpack_from(view, pos)
            if size > _MAX_RECORD:
                raise _unreadable(f"journal record {count} is malformed")
            if len(data) - pos - _LENGTH.size < size:
                return False, count
            record = bytes(view[pos + _LENGTH.size : pos + _LENGTH.size + size])
            pos += _LENGTH.size + size
            try:
                header, statement = self._sealing.unseal(record, purpose=_JOURNAL_PURPOSE)
            except CryptoError:
                raise _unreadable(f"journal record {count} does not open") from None
            if header != epoch + count.to_bytes(8, "big"):
                raise _unreadable(f"journal record {count} is out of place")
            try:
                registry.apply(DeviceRegistration.from_bytes(statement))
            except InvalidInput:
                raise _unreadable(f"journal record {count} does not apply") from None
            count += 1
        return True, count

    def _drop_stale_journals(self, *, keep: bytes) -> None:
        # A crash between a compaction's snapshot and its journal removal leaves the old journal, whose
        # records the new snapshot already holds.
        current = self._journal_path(keep).name if keep else None
        for path in self._dir.glob(f"registry-{self._tag}-*.journal"):
            if path.name != current:
                remove_file(path)
