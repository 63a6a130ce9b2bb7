"""Producer signatures on update_accepted / aggregate_published entries, and verify_log's entry checks."""

from __future__ import annotations

import dataclasses

import pytest

from qflare.crypto import SigningKey, secret_access
from qflare.errors import LedgerIntegrityError, MalformedPayload
from qflare.ledger.entries import (
    AggregatePublished,
    RoundOpened,
    UpdateAccepted,
    decode_event,
    encode_event,
    sign_entry,
    signed_message,
    verify_entry,
)
from qflare.ledger.log import TransparencyLog, verify_log
from qflare.ledger.note import HybridNoteSigner
from qflare.ledger.store import MemoryLogStore

ORIGIN = "qflare.test/ledger"
H = "ab" * 32
T = 1767139200000


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.from_seed(bytes(range(64)), secret_access.TOKEN)


@pytest.fixture(scope="module")
def other_key() -> SigningKey:
    return SigningKey.from_seed(bytes(range(1, 65)), secret_access.TOKEN)


def _update(device: str = "dev-1") -> UpdateAccepted:
    return UpdateAccepted(device, 3, H, 600, 1.25, "accepted", T)


def _aggregate() -> AggregatePublished:
    return AggregatePublished(3, H, "median", {"weighting": "num_examples"}, (("dev-1", 600.0),), T)


@pytest.mark.parametrize("make", [_update, _aggregate], ids=["update_accepted", "aggregate_published"])
def test_signed_entry_round_trips_and_verifies(make: object, key: SigningKey) -> None:
    # Prepare
    event = make()  # type: ignore[operator]

    # Execute
    signed = sign_entry(event, key)
    decoded = decode_event(encode_event(signed))

    # Assert
    assert decoded == signed
    assert signed.producer_signature is not None and len(signed.producer_signature) == 2 * 3373
    verify_entry(decoded, key.public_key())
    assert signed_message(signed) == encode_event(event)  # the signature covers the entry with it null


def test_unsigned_entry_is_refused(key: SigningKey) -> None:
    with pytest.raises(LedgerIntegrityError) as err:
        verify_entry(_update(), key.public_key())
    assert err.value.reason == "unsigned_entry"


def test_entry_signed_by_another_key_is_refused(key: SigningKey, other_key: SigningKey) -> None:
    # Prepare: a host holding its own key forges the enclave's entry
    forged = sign_entry(_update(), other_key)

    # Execute / Assert
    with pytest.raises(LedgerIntegrityError) as err:
        verify_entry(forged, key.public_key())
    assert err.value.reason == "invalid_entry_signature"


@pytest.mark.parametrize("field", ["device_id", "sample_count", "update_norm", "verdict", "time_ms"])
def test_any_changed_field_breaks_the_signature(field: str, key: SigningKey) -> None:
    # Prepare
    signed = sign_entry(_update(), key)
    value = {"device_id": "dev-2", "sample_count": 60000, "update_norm": 0.5, "verdict": "flagged",
             "time_ms": T + 1}[field]

    # Execute
    changed = dataclasses.replace(signed, **{field: value})

    # Assert
    with pytest.raises(LedgerIntegrityError) as err:
        verify_entry(changed, key.public_key())
    assert err.value.reason == "invalid_entry_signature"


def test_flipped_signature_byte_is_refused(key: SigningKey) -> None:
    # Prepare
    signed = sign_entry(_aggregate(), key)
    assert signed.producer_signature is not None
    flipped = ("0" if signed.producer_signature[100] != "0" else "1").join(
        (signed.producer_signature[:100], signed.producer_signature[101:]))

    # Execute / Assert
    with pytest.raises(LedgerIntegrityError) as err:
        verify_entry(dataclasses.replace(signed, producer_signature=flipped), key.public_key())
    assert err.value.reason == "invalid_entry_signature"


@pytest.mark.parametrize("sig", ["ab", "AB" * 3373, "zz" * 3373, "ab" * 3374])
def test_malformed_signature_field_is_refused_at_encoding(sig: str) -> None:
    with pytest.raises(MalformedPayload) as err:
        encode_event(dataclasses.replace(_update(), producer_signature=sig))
    assert err.value.reason == "bad_entry_field"


def test_other_events_need_no_signature(key: SigningKey) -> None:
    verify_entry(RoundOpened(3, H, "fedavg", T, T), key.public_key())  # no error


def _signed_log(key: SigningKey, events: list[bytes]) -> MemoryLogStore:
    store = MemoryLogStore()
    log = TransparencyLog(store, origin=ORIGIN, signer=HybridNoteSigner(ORIGIN, key, secret_access.TOKEN))
    log.append(events)
    log.checkpoint()
    return store


def test_verify_log_counts_signed_entries(key: SigningKey) -> None:
    # Prepare
    entries = [encode_event(RoundOpened(3, H, "fedavg", T, T)), encode_event(sign_entry(_update(), key)),
               encode_event(sign_entry(_aggregate(), key))]
    store = _signed_log(key, entries)
    log_key = HybridNoteSigner(ORIGIN, key, secret_access.TOKEN).log_key()

    # Execute
    report = verify_log(store, log_key, origin=ORIGIN, entry_key=log_key.verify_key())

    # Assert
    assert report.ok, report.problems
    assert report.signed_entries == 2
    assert log_key.verify_key() == key.public_key()


@pytest.mark.parametrize(
    ("bad", "reason"),
    [("unsigned", "unsigned_entry"), ("host_signed", "invalid_entry_signature"), ("garbage", "unknown_entry_version")],
)
def test_verify_log_names_a_forged_or_unsigned_entry(
    bad: str, reason: str, key: SigningKey, other_key: SigningKey
) -> None:
    # Prepare: a checkpoint signed over the forged entry (the enclave signs any tree the host gives it)
    forged = {
        "unsigned": encode_event(_update("dev-9")),
        "host_signed": encode_event(sign_entry(_update("dev-9"), other_key)),
        "garbage": b"not an entry",
    }[bad]
    entries = [encode_event(sign_entry(_update(), key)), forged, encode_event(sign_entry(_aggregate(), key))]
    store = _signed_log(key, entries)
    log_key = HybridNoteSigner(ORIGIN, key, secret_access.TOKEN).log_key()

    # Execute
    report = verify_log(store, log_key, origin=ORIGIN, entry_key=log_key.verify_key())

    # Assert
    assert report.reasons == [reason]
    assert report.first_bad_index == 1
    assert report.signed_entries == 2
