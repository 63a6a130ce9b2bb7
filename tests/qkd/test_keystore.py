"""The shared key store: each key goes to the master once and to the slave once."""

from __future__ import annotations

import threading

import pytest

from qflare.errors import ConfigError, QKDError
from qflare.qkd.channel import Channel
from qflare.qkd.keystore import BB84Link, KeyStore, KeyStoreLimits


def _store(material: int = 4096, **limits: int) -> KeyStore:
    store = KeyStore(KeyStoreLimits(**limits))
    store.add_material(bytes(range(256)) * (material // 256))
    return store


def test_issued_key_is_released_once_to_its_slave() -> None:
    # Prepare
    store = _store()
    # Execute
    issued = store.issue("edge-1", "server", 2, 256)
    released = store.release("edge-1", "server", [k.key_id for k in issued])
    # Assert
    assert released == issued
    assert [len(k.key) for k in issued] == [32, 32]
    assert issued[0].key != issued[1].key  # consecutive pool bytes, not the same slice
    with pytest.raises(QKDError) as info:
        store.release("edge-1", "server", [issued[0].key_id])
    assert info.value.reason == "key_id_reused"


def test_issue_consumes_the_pool() -> None:
    # Prepare
    store = _store(material=1024)
    # Execute
    store.issue("m", "s", 4, 1024)
    # Assert
    assert store.status().stored_bytes == 1024 - 512
    assert store.status().issued_pending == 4


@pytest.mark.parametrize(
    ("ids", "reason"),
    [(["4b8e8c1c-7a0e-4c1e-9d0e-000000000000"], "unknown_key_id"), ([], "key_number")],
)
def test_release_refuses_unknown_or_empty(ids: list[str], reason: str) -> None:
    store = _store()
    with pytest.raises(QKDError) as info:
        store.release("m", "s", ids)
    assert info.value.reason == reason


def test_release_is_all_or_nothing() -> None:
    # Prepare
    store = _store()
    (good,) = store.issue("m", "s", 1, 256)
    # Execute: one good ID and one unknown
    with pytest.raises(QKDError):
        store.release("m", "s", [good.key_id, "00000000-0000-4000-8000-000000000000"])
    # Assert: the good key is still deliverable
    assert store.release("m", "s", [good.key_id]) == [good]


def test_same_id_twice_in_one_request_is_reuse() -> None:
    store = _store()
    (key,) = store.issue("m", "s", 1, 256)
    with pytest.raises(QKDError) as info:
        store.release("m", "s", [key.key_id, key.key_id])
    assert info.value.reason == "key_id_reused"


def test_key_for_another_pair_is_not_released() -> None:
    store = _store()
    (key,) = store.issue("edge-1", "server", 1, 256)
    with pytest.raises(QKDError) as info:
        store.release("edge-2", "server", [key.key_id])
    assert info.value.reason == "sae_not_authorised"


@pytest.mark.parametrize(
    ("number", "size", "reason"),
    [
        (1, 100, "key_size"),
        (1, 2048, "key_size"),
        (0, 256, "key_number"),
        (129, 256, "key_number"),
        (1, 8192 * 8, "key_size"),
    ],
)
def test_bad_requests_are_refused(number: int, size: int, reason: str) -> None:
    store = _store()
    with pytest.raises(QKDError) as info:
        store.issue("m", "s", number, size)
    assert info.value.reason == reason


def test_empty_pool_is_out_of_key() -> None:
    # Prepare
    store = _store(material=256)
    store.issue("m", "s", 8, 256)
    # Execute / Assert
    with pytest.raises(QKDError) as info:
        store.issue("m", "s", 1, 256)
    assert info.value.reason == "out_of_key"


def test_pool_is_capped_at_capacity() -> None:
    store = KeyStore(KeyStoreLimits(max_key_count=10))
    assert store.add_material(bytes(1000)) == 320
    assert store.status().stored_key_count == 10


def test_concurrent_masters_never_get_the_same_material() -> None:
    # Prepare
    store = KeyStore()
    store.add_material(bytes(i % 251 for i in range(64 * 32 * 8)))
    got: list[bytes] = []
    lock = threading.Lock()

    def master() -> None:
        for _ in range(64):
            (k,) = store.issue("m", "s", 1, 256)
            with lock:
                got.append(k.key)

    # Execute
    threads = [threading.Thread(target=master) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Assert: 512 distinct 32-byte slices of a 16 KiB pool, i.e. the whole pool exactly once
    assert len(got) == 512 and store.status().stored_bytes == 0


def test_bb84_link_fills_the_pool_from_real_runs() -> None:
    # Prepare
    store = KeyStore()
    link = BB84Link(store, Channel(distance_km=10.0), pulses_per_frame=500_000, seed=1)
    # Execute
    frames = link.fill(4000)
    # Assert
    assert frames >= 1 and store.status().stored_bytes >= 4000
    assert link.last is not None and not link.last.aborted
    stats = store.link_stats()
    assert stats is not None and stats.frames == frames and stats.aborted_frames == 0
    assert stats.qber == link.last.qber_estimated and stats.qber_abort == 0.11
    assert stats.distilled_key_bits >= 4000 * 8 and stats.pulses == frames * 500_000
    assert stats.key_bits_per_pulse == link.last.key_rate and stats.last_abort_reason is None


def test_bb84_link_under_attack_yields_no_key() -> None:
    # Prepare
    store = KeyStore()
    link = BB84Link(store, pulses_per_frame=200_000, eavesdrop=1.0, seed=1)
    # Execute
    frames = link.fill(4000)
    # Assert: stopped after three aborted frames, nothing stored
    assert frames == 3 and store.status().stored_bytes == 0
    assert link.last is not None and link.last.abort_reason == "qber_above_threshold"
    stats = store.link_stats()
    assert stats is not None and stats.aborted_frames == 3 and stats.qber is not None and stats.qber > 0.11
    assert stats.last_abort_reason == "qber_above_threshold" and stats.distilled_key_bits == 0


def test_a_store_filled_by_hand_has_no_link_stats() -> None:
    assert _store().link_stats() is None


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError):
        KeyStoreLimits(key_size=100)
