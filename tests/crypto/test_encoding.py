"""Canonical header encoding: unique encoding, strict decoding."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.crypto.encoding import KeySource, RequestHeader
from qflare.errors import MalformedPayload, QFlareError

token = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=128)
path = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=200).map(lambda s: "/" + s)


@st.composite
def headers(draw: st.DrawFn) -> RequestHeader:
    source = draw(st.sampled_from(list(KeySource)))
    uses_kem = source is not KeySource.QKD
    uses_qkd = source is not KeySource.MLKEM
    return RequestHeader(
        key_source=source,
        timestamp_ms=draw(st.integers(0, 2**64 - 1)),
        nonce=draw(st.binary(min_size=16, max_size=16)),
        device_id=draw(token),
        method=draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])),
        path=draw(path),
        round_id=draw(st.one_of(st.none(), st.integers(0, 2**64 - 1), token)),
        key_ids=tuple(draw(st.lists(token, min_size=1, max_size=16))) if uses_qkd else (),
        kem_ciphertext=draw(st.binary(min_size=1120, max_size=1120)) if uses_kem else b"",
    )


@settings(max_examples=200, deadline=None)
@given(header=headers())
def test_encode_decode_round_trip(header: RequestHeader) -> None:
    raw = header.encode()
    decoded = RequestHeader.decode(raw)
    assert decoded == header
    assert decoded.encode() == raw


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=1400))
def test_random_bytes_only_raise_qflare_errors(data: bytes) -> None:
    try:
        RequestHeader.decode(data)
    except QFlareError:
        pass


def _base() -> RequestHeader:
    return RequestHeader(
        key_source=KeySource.MLKEM,
        timestamp_ms=1,
        nonce=bytes(16),
        device_id="d",
        method="GET",
        path="/",
        round_id=None,
        key_ids=(),
        kem_ciphertext=bytes(1120),
    )


def test_round_id_types_are_distinct() -> None:
    h_int = _replace(_base(), round_id=7).encode()
    h_str = _replace(_base(), round_id="7").encode()
    assert h_int != h_str
    assert RequestHeader.decode(h_int).round_id == 7
    assert RequestHeader.decode(h_str).round_id == "7"


def _replace(header: RequestHeader, **changes: object) -> RequestHeader:
    fields = {name: getattr(header, name) for name in header.__dataclass_fields__}
    fields.update(changes)
    return RequestHeader(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"device_id": ""},
        {"device_id": "has space"},
        {"device_id": "x" * 129},
        {"device_id": "caf\u00e9"},
        {"method": "get"},
        {"path": "no-slash"},
        {"path": "/" + "a" * 2048},
        {"round_id": -1},
        {"round_id": True},
        {"round_id": 2**64},
        {"nonce": bytes(15)},
        {"kem_ciphertext": b""},
        {"key_ids": ("k",)},
        {"key_source": KeySource.QKD},
        {"timestamp_ms": -1},
    ],
)
def test_invalid_fields_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        _replace(_base(), **changes)


def test_decoder_rejects_non_canonical() -> None:
    raw = _base().encode()
    with pytest.raises(MalformedPayload):
        RequestHeader.decode(raw + b"\x00")  # trailing byte
    with pytest.raises(MalformedPayload):
        RequestHeader.decode(raw[:-1])
    bad_magic = b"QFRX" + raw[4:]
    with pytest.raises(MalformedPayload):
        RequestHeader.decode(bad_magic)
    for version in (0, 2, 0xFFFF):
        downgraded = raw[:4] + struct.pack(">H", version) + raw[6:]
        with pytest.raises(MalformedPayload) as info:
            RequestHeader.decode(downgraded)
        assert info.value.reason == "unsupported_version"
    other_suite = raw[:6] + struct.pack(">H", 2) + raw[8:]
    with pytest.raises(MalformedPayload) as info:
        RequestHeader.decode(other_suite)
    assert info.value.reason == "unsupported_suite"
    bad_source = raw[:8] + b"\x09" + raw[9:]
    with pytest.raises(MalformedPayload):
        RequestHeader.decode(bad_source)
