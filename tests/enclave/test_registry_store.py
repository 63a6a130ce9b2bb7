"""The enclave's sealed device registry on disk: one sealed record per change (not the whole registry
rewritten), a snapshot when the journal outgrows it, and a journal the host cannot reorder, splice or graft
without the enclave refusing to start from it."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from qflare.crypto.signing import SigningKey
from qflare.enclave.registry import DeviceRegistration, DeviceRegistry
from qflare.enclave.sealing import SealingKey
from qflare.enclave.trusted.registry_store import MIN_COMPACT_RECORDS, SNAPSHOT_PURPOSE, SealedRegistryStore
from qflare.errors import EnclaveError

ROOT = b"r" * 32
MEASUREMENT = b"m" * 32
TAG = "0123456789abcdef"


@pytest.fixture(scope="module")
def device_key() -> SigningKey:
    return SigningKey.generate()


def reg(device_id: str, key: SigningKey, *, status: str = "active", sequence: int = 1) -> DeviceRegistration:
    return DeviceRegistration(device_id=device_id, public_key=key.public_key().to_bytes(), key_source="mlkem",
                              status=status, sequence=sequence)


def store(path: Path) -> SealedRegistryStore:
    return SealedRegistryStore(SealingKey(ROOT, MEASUREMENT), path, TAG)


def change(s: SealedRegistryStore, registry: DeviceRegistry, registration: DeviceRegistration) -> None:
    assert registry.apply(registration)
    s.append(registry, registration)


def journal(path: Path) -> Path:
    (only,) = path.glob("registry-*.journal")
    return only


def records(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos : pos + 4 + size])
        pos += 4 + size
    return out


def test_changes_are_appended_not_rewritten_and_reload_whole(tmp_path: Path, device_key: SigningKey) -> None:
    # Prepare: a new store with an empty snapshot
    s, registry = store(tmp_path), DeviceRegistry()
    s.save(registry)
    snapshot = s.snapshot_path.read_bytes()

    # Execute: ten enrolments and one revocation
    for i in range(10):
        change(s, registry, reg(f"dev-{i}", device_key))
    change(s, registry, reg("dev-3", device_key, status="revoked", sequence=2))
    loaded = store(tmp_path).load()

    # Assert: the snapshot is untouched, eleven records were appended, and a new enclave sees all of it
    assert s.snapshot_path.read_bytes() == snapshot
    assert s.journal_records == 11
    assert len(records(journal(tmp_path).read_bytes())) == 11
    assert loaded is not None
    assert loaded.statements() == registry.statements()
    revoked = loaded.get("dev-3")
    assert revoked is not None and revoked.revoked


def test_the_journal_is_compacted_into_a_snapshot_once_it_outgrows_it(tmp_path: Path, device_key: SigningKey) -> None:
    # Prepare
    s, registry = store(tmp_path), DeviceRegistry()
    s.save(registry)

    # Execute: one device re-registered once more than the journal may hold (it holds at least
    # MIN_COMPACT_RECORDS records, and no more than the registry has devices beyond that)
    for sequence in range(1, MIN_COMPACT_RECORDS + 2):
        change(s, registry, reg("dev-1", device_key, sequence=sequence))
    loaded = store(tmp_path).load()

    # Assert: the last change wrote a snapshot, the old journal is gone, the newest statement is kept
    assert s.journal_records == 0
    assert list(tmp_path.glob("registry-*.journal")) == []
    newest = loaded.get("dev-1") if loaded is not None else None
    assert newest is not None and newest.sequence == MIN_COMPACT_RECORDS + 1


def test_a_torn_last_record_is_dropped_and_the_store_repaired(tmp_path: Path, device_key: SigningKey) -> None:
    # Prepare: two records, the second cut short (a crash in the middle of its write, before its answer)
    s, registry = store(tmp_path), DeviceRegistry()
    s.save(registry)
    change(s, registry, reg("dev-1", device_key))
    change(s, registry, reg("dev-2", device_key))
    path = journal(tmp_path)
    path.write_bytes(path.read_bytes()[:-10])

    # Execute
    reloaded = store(tmp_path)
    loaded = reloaded.load()
    assert loaded is not None
    change(reloaded, loaded, reg("dev-3", device_key))  # the host re-sends; the store goes on appending
    again = store(tmp_path).load()

    # Assert
    assert loaded.get("dev-2") is None
    assert again is not None and again.get("dev-1") is not None and again.get("dev-3") is not None


@pytest.mark.parametrize("tamper", ["reorder", "drop_middle", "duplicate", "flip_bit", "oversized_length"])
def test_a_tampered_journal_refuses_to_open(tmp_path: Path, device_key: SigningKey, tamper: str) -> None:
    # Prepare: three records (an enrolment, a revocation, another enrolment)
    s, registry = store(tmp_path), DeviceRegistry()
    s.save(registry)
    change(s, registry, reg("dev-1", device_key))
    change(s, registry, reg("dev-1", device_key, status="revoked", sequence=2))
    change(s, registry, reg("dev-2", device_key))
    path = journal(tmp_path)
    first, second, third = records(path.read_bytes())
    tampered = {
        "reorder": first + third + second,
        "drop_middle": first + third,  # would undo the revocation but keep the later enrolment
        "duplicate": first + first + second + third,
        "flip_bit": first + second[:-1] + bytes([second[-1] ^ 1]) + third,
        "oversized_length": first + struct.pack(">I", 1 << 30) + second[4:] + third,
    }[tamper]
    path.write_bytes(tampered)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    # Execute
    with pytest.raises(EnclaveError) as refused:
        store(tmp_path).load()

    # Assert: refused, and nothing on disk changed
    assert refused.value.reason == "unseal_failed"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_journal_grafted_onto_another_snapshot_refuses_to_open(tmp_path: Path, device_key: SigningKey) -> None:
    # Prepare: a journal of snapshot A, renamed to follow snapshot B
    s, registry = store(tmp_path), DeviceRegistry()
    s.save(registry)
    change(s, registry, reg("dev-1", device_key))
    graft = journal(tmp_path).read_bytes()
    s.save(registry)
    change(s, registry, reg("dev-2", device_key))
    journal(tmp_path).write_bytes(graft)

    # Execute / Assert
    with pytest.raises(EnclaveError) as refused:
        store(tmp_path).load()
    assert refused.value.reason == "unseal_failed"


def test_a_journal_left_by_an_interrupted_compaction_is_removed(tmp_path: Path, device_key: SigningKey) -> None:
    # Prepare: the old journal is still there after the new snapshot was written (a crash between the two)
    s, registry = store(tmp_path), DeviceRegistry()
    s.save(registry)
    change(s, registry, reg("dev-1", device_key))
    stale = journal(tmp_path)
    kept = stale.read_bytes()
    s.save(registry)
    stale.write_bytes(kept)

    # Execute
    loaded = store(tmp_path).load()

    # Assert: the snapshot holds the device; the stale journal is gone
    assert loaded is not None and loaded.get("dev-1") is not None
    assert not stale.exists()


def test_a_snapshot_sealed_before_the_journal_still_loads(tmp_path: Path, device_key: SigningKey) -> None:
    # Prepare: the earlier layout, a sealed JSON list of statements
    registry = DeviceRegistry()
    registry.apply(reg("dev-1", device_key))
    sealing = SealingKey(ROOT, MEASUREMENT)
    s = store(tmp_path)
    old_layout = json.dumps(registry.statements()).encode("ascii")
    s.snapshot_path.write_bytes(sealing.seal(old_layout, purpose=SNAPSHOT_PURPOSE))

    # Execute
    loaded = s.load()
    change(s, registry, reg("dev-2", device_key))
    again = store(tmp_path).load()

    # Assert: moved to the new layout on load, and appending works from there
    _, body = sealing.unseal(s.snapshot_path.read_bytes(), purpose=SNAPSHOT_PURPOSE)
    assert set(json.loads(body)) == {"epoch", "devices"}
    assert loaded is not None and loaded.get("dev-1") is not None
    assert again is not None and again.get("dev-2") is not None


def test_a_short_journal_write_is_taken_back_and_refused(
    tmp_path: Path, device_key: SigningKey, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: one record written; the disk then takes only part of the next
    s, registry = store(tmp_path), DeviceRegistry()
    s.save(registry)
    change(s, registry, reg("dev-1", device_key))
    before = journal(tmp_path).read_bytes()
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:7]))

    # Execute
    second = reg("dev-2", device_key)
    registry.apply(second)
    with pytest.raises(EnclaveError) as refused:
        s.append(registry, second)
    monkeypatch.undo()
    third = reg("dev-3", device_key)
    change(s, registry, third)
    loaded = store(tmp_path).load()

    # Assert: the part was taken back, and the next record is readable after the first
    assert refused.value.reason == "enclave_storage_failed"
    assert journal(tmp_path).read_bytes().startswith(before)
    assert loaded is not None and loaded.get("dev-1") is not None and loaded.get("dev-3") is not None
    assert loaded.get("dev-2") is None


def test_no_snapshot_loads_as_none(tmp_path: Path) -> None:
    assert store(tmp_path).load() is None
