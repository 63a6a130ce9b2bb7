"""Canonical leaf bytes of QFLARE events: byte-exact encodings, round trips, strict decoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qflare.errors import MalformedPayload
from qflare.ledger.entries import (
    AggregatePublished,
    DeviceEnrolled,
    DeviceQuarantined,
    DeviceRestored,
    DeviceRevoked,
    EnclaveQuotePublished,
    KeySourceRefused,
    LedgerEvent,
    QkdLinkAborted,
    RoundClosed,
    RoundFailed,
    RoundOpened,
    UpdateAccepted,
    UpdateRefused,
    decode_event,
    encode_event,
)

H = "ab" * 32
T = 1767139200000
EXAMPLES: list[LedgerEvent] = [
    DeviceEnrolled("dev-1", H, T),
    DeviceRevoked("dev-1", "key_compromised", T),
    DeviceQuarantined("dev-1", "norm_outlier", T),
    DeviceRestored("dev-1", T),
    EnclaveQuotePublished("00ff", H, H, T),
    RoundOpened(3, H, "fedavg", T + 60000, T),
    RoundClosed(3, 12, T),
    RoundFailed(3, "no_quorum", T),
    UpdateAccepted("dev-1", 3, H, 600, 1.25, "accepted", T),
    UpdateRefused("bad_signature", None, None, T),
    AggregatePublished(3, H, "trimmed_mean", {"beta": "0.1", "k": 2}, (("dev-1", 0.5), ("dev-2", 0.5)), T),
    QkdLinkAborted("alice-bob", "qber_too_high", 0.125, T),
    KeySourceRefused("qkd", "unknown_key_id", "dev-9", T),
]


def test_update_accepted_bytes_are_exact() -> None:
    # Prepare
    event = UpdateAccepted("dev-1", 3, H, 600, 1.25, "accepted", T)

    # Execute
    data = encode_event(event)

    # Assert
    assert data == (
        b'qflare-ledger-entry/v1\n{"device_id":"dev-1","envelope_sha256":"'
        + H.encode()
        + b'","event":"update_accepted",'
        b'"producer_signature":null,"round_id":3,"sample_count":600,"time_ms":1767139200000,"update_norm":"1.25",'
        b'"verdict":"accepted"}'
    )


def test_aggregate_published_bytes_are_exact() -> None:
    # Prepare
    event = EXAMPLES[10]

    # Execute
    data = encode_event(event)

    # Assert
    assert data.endswith(
        b'"parameters":{"beta":"0.1","k":2},"participants":[["dev-1","0.5"],["dev-2","0.5"]],'
        b'"producer_signature":null,"round_id":3,"rule":"trimmed_mean","time_ms":1767139200000}'
    )


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(event: LedgerEvent) -> None:
    # Prepare / Execute
    data = encode_event(event)

    # Assert
    assert decode_event(data) == event
    assert data.startswith(b"qflare-ledger-entry/v1\n{")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "unknown_entry_version"),
        (b"qflare-ledger-entry/v2\n{}", "unknown_entry_version"),
        (b"qflare-ledger-entry/v1\n", "malformed_entry"),
        (b"qflare-ledger-entry/v1\n[1]", "malformed_entry"),
        (b"qflare-ledger-entry/v1\n\xff", "malformed_entry"),
        (b'qflare-ledger-entry/v1\n{"event":"nope"}', "unknown_event"),
        (b'qflare-ledger-entry/v1\n{"device_id":"d","event":"device_restored"}', "bad_entry_fields"),
        (b'qflare-ledger-entry/v1\n{"device_id":"d","event":"device_restored","time_ms":1.5}', "malformed_entry"),
        (b'qflare-ledger-entry/v1\n{"device_id":"d","event":"device_restored","time_ms":true}', "bad_entry_field"),
        (b'qflare-ledger-entry/v1\n{"device_id":"d","event":"device_restored","time_ms":-1}', "bad_entry_field"),
        (
            b'qflare-ledger-entry/v1\n{"device_id":"d","device_id":"e","event":"device_restored","time_ms":1}',
            "malformed_entry",
        ),
        (b'qflare-ledger-entry/v1\n{"event":"device_restored","device_id":"d","time_ms":1}', "non_canonical_entry"),
        (b'qflare-ledger-entry/v1\n{"device_id":"d", "event":"device_restored","time_ms":1}', "non_canonical_entry"),
        (
            b'qflare-ledger-entry/v1\n{"event":"qkd_link_aborted","link_id":"l","qber":"NaN","reason":"r","time_ms":1}',
            "non_finite",
        ),
        (
            b'qflare-ledger-entry/v1\n{"event":"qkd_link_aborted","link_id":"l","qber":"0.10","reason":"r","time_ms":1}',
            "non_canonical_entry",
        ),
        (b"qflare-ledger-entry/v1\n" + b"[" * 100000, "malformed_entry"),
    ],
)
def test_garbage_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    # Prepare / Execute
    with pytest.raises(MalformedPayload) as info:
        decode_event(data)

    # Assert
    assert info.value.reason == reason


def test_non_finite_norm_cannot_be_encoded() -> None:
    # Prepare
    event = UpdateAccepted("dev-1", 3, H, 600, float("inf"), "accepted", T)

    # Execute
    with pytest.raises(MalformedPayload) as info:
        encode_event(event)

    # Assert
    assert info.value.reason == "non_finite"


@given(st.binary(max_size=200))
def test_decoding_random_bytes_never_crashes(data: bytes) -> None:
    # Prepare / Execute / Assert
    try:
        decode_event(b"qflare-ledger-entry/v1\n" + data)
    except MalformedPayload as exc:
        assert exc.reason


@given(
    st.text(max_size=40),
    st.integers(0, 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_update_accepted_round_trips(device: str, n: int, norm: float) -> None:
    # Prepare
    event = UpdateAccepted(device, n, H, n, norm, "accepted", n)

    # Execute
    decoded = decode_event(encode_event(event))

    # Assert
    assert decoded == event
