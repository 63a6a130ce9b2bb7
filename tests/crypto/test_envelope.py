"""Request envelope: round trips, key sources and policy, and adversarial inputs."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qflare.crypto.encoding import KeySource
from qflare.crypto.envelope import (
    RESPONSE_OVERHEAD,
    check_key_source,
    check_timestamp,
    decrypt_envelope,
    parse_envelope,
    seal_request,
    verify_envelope_signature,
)
from qflare.crypto.kem import XWingPrivateKey
from qflare.crypto.signing import SigningKey
from qflare.errors import (
    CryptoError,
    DecryptionFailed,
    InvalidSignature,
    MalformedPayload,
    PayloadTooLarge,
    PermissionDenied,
    QFlareError,
    QKDError,
    StaleRequest,
)

from .conftest import NOW, server_pipeline

QKD_KEY = bytes(range(32))
FIELDS: dict[str, Any] = dict(device_id="device-0001", method="POST", path="/v1/rounds/7/updates", round_id=7, now=NOW)


def seal(device: SigningKey, server: XWingPrivateKey, payload: bytes = b"update", **kw: Any) -> Any:
    args = {**FIELDS, **kw}
    return seal_request(device, server.public_key(), payload=payload, **args)


# ------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("source", list(KeySource))
def test_round_trip_each_key_source(device_key: SigningKey, server_key: XWingPrivateKey, source: KeySource) -> None:
    qkd = QKD_KEY if source is not KeySource.MLKEM else None
    ids = ["kme/1"] if qkd else []
    data, opener = seal(device_key, server_key, b"weights", key_source=source, qkd_key=qkd, key_ids=ids)
    payload, sealer = server_pipeline(data, device_key.public_key(), server_key, allowed={source}, extra_secret=qkd)
    assert payload == b"weights"
    response = sealer.seal(b"global model")
    assert len(response) == len(b"global model") + RESPONSE_OVERHEAD
    assert opener.open(response) == b"global model"
    assert sealer.request_hash == opener.request_hash


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.binary(max_size=8192),
    reply=st.binary(max_size=2048),
    round_id=st.one_of(st.none(), st.integers(0, 2**64 - 1), st.from_regex(r"[a-z0-9-]{1,40}", fullmatch=True)),
    device_id=st.from_regex(r"[A-Za-z0-9._:@-]{1,64}", fullmatch=True),
)
def test_round_trip_property(
    device_key: SigningKey,
    server_key: XWingPrivateKey,
    payload: bytes,
    reply: bytes,
    round_id: Any,
    device_id: str,
) -> None:
    data, opener = seal(device_key, server_key, payload, round_id=round_id, device_id=device_id)
    env = parse_envelope(data, max_size=1 << 20)
    assert (env.device_id, env.round_id, env.method, env.path) == (device_id, round_id, "POST", FIELDS["path"])
    got, sealer = server_pipeline(data, device_key.public_key(), server_key)
    assert got == payload
    assert opener.open(sealer.seal(reply)) == reply


def test_every_request_has_fresh_nonce_and_keys(device_key: SigningKey, server_key: XWingPrivateKey) -> None:
    envs = [parse_envelope(seal(device_key, server_key)[0], max_size=1 << 20) for _ in range(20)]
    assert len({e.nonce for e in envs}) == 20
    assert len({e.kem_ciphertext for e in envs}) == 20
    assert len({e.header_hash for e in envs}) == 20


def test_enclave_split_reparses_raw(device_key: SigningKey, server_key: XWingPrivateKey) -> None:
    data, opener = seal(device_key, server_key, b"for the enclave")
    web = parse_envelope(data, max_size=1 << 20)
    verify_envelope_signature(web, device_key.public_key())
    enclave_view = parse_envelope(web.raw, max_size=1 << 20)  # bytes cross the process boundary
    payload, sealer = decrypt_envelope(enclave_view, server_key, allowed_key_sources={"mlkem"})
    assert payload == b"for the enclave"
    assert opener.open(sealer.seal(b"ok")) == b"ok"


# ---------------------------------------------------------------------------- key sources and policy


def test_policy_refuses_mlkem_for_qkd_device(device_key: SigningKey, server_key: XWingPrivateKey) -> None:
    env = parse_envelope(seal(device_key, server_key)[0], max_size=1 << 20)
    for allowed in ({KeySource.HYBRID}, {"qkd", "hybrid"}):
        with pytest.raises(PermissionDenied) as info:
            check_key_source(env, allowed)
        assert info.value.reason == "key_source_not_allowed"
        with pytest.raises(PermissionDenied):
            decrypt_envelope(env, server_key, allowed_key_sources=allowed, extra_secret=QKD_KEY)
    with pytest.raises(ValueError):
        check_key_source(env, set())


def test_server_requires_what_the_header_says(device_key: SigningKey, server_key: XWingPrivateKey) -> None:
    hybrid = parse_envelope(
        seal(device_key, server_key, key_source="hybrid", qkd_key=QKD_KEY, key_ids=["k"])[0], max_size=1 << 20
    )
    with pytest.raises(QKDError) as info:
        decrypt_envelope(hybrid, server_key, allowed_key_sources={"hybrid"})
    assert info.value.reason == "qkd_key_required"
    with pytest.raises(DecryptionFailed):  # wrong QKD key
        decrypt_envelope(hybrid, server_key, allowed_key_sources={"hybrid"}, extra_secret=bytes(32))
    with pytest.raises(DecryptionFailed):  # right QKD key, wrong KEM key: hybrid needs both
        decrypt_envelope(hybrid, XWingPrivateKey.generate(), allowed_key_sources={"hybrid"}, extra_secret=QKD_KEY)
    with pytest.raises(QKDError):
        decrypt_envelope(hybrid, server_key, allowed_key_sources={"hybrid"}, extra_secret=b"short")
    mlkem = parse_envelope(seal(device_key, server_key)[0], max_size=1 << 20)
    with pytest.raises(CryptoError) as info2:
        decrypt_envelope(mlkem, server_key, allowed_key_sources={"mlkem"}, extra_secret=QKD_KEY)
    assert info2.value.reason == "key_source_mismatch"
    with pytest.raises(CryptoError):
        decrypt_envelope(mlkem, None, allowed_key_sources={"mlkem"})
    qkd = parse_envelope(
        seal(device_key, server_key, key_source="qkd", qkd_key=QKD_KEY, key_ids=["k"])[0], max_size=1 << 20
    )
    assert qkd.kem_ciphertext == b""
    payload, _ = decrypt_envelope(qkd, None, allowed_key_sources={"qkd"}, extra_secret=QKD_KEY)
    assert payload == b"update"


def test_seal_argument_checks(device_key: SigningKey, server_key: XWingPrivateKey) -> None:
    with pytest.raises(ValueError):
        seal(device_key, server_key, qkd_key=QKD_KEY)
    with pytest.raises(ValueError):
        seal(device_key, server_key, key_ids=["k"])
    with pytest.raises(ValueError):
        seal(device_key, server_key, key_source="hybrid", qkd_key=QKD_KEY)
    with pytest.raises(ValueError):
        seal(device_key, server_key, key_source="qkd", qkd_key=b"too short", key_ids=["k"])
    with pytest.raises(ValueError):
        seal(device_key, server_key, key_source="quantum")
    with pytest.raises(ValueError):
        seal(device_key, server_key, device_id="bad id")
    with pytest.raises(TypeError):
        seal_request(device_key.public_key(), server_key.public_key(), payload=b"", **FIELDS)  # type: ignore[arg-type]


def test_timestamp_window(device_key: SigningKey, server_key: XWingPrivateKey) -> None:
    env = parse_envelope(seal(device_key, server_key)[0], max_size=1 << 20)
    check_timestamp(env, NOW + 300, 300)
    check_timestamp(env, NOW - 300, 300)
    with pytest.raises(StaleRequest) as old:
        check_timestamp(env, NOW + 300.5, 300)
    assert old.value.reason == "stale_timestamp"
    with pytest.raises(StaleRequest) as future:
        check_timestamp(env, NOW - 301, 300)
    assert future.value.reason == "future_timestamp"


# ------------------------------------------------------------------------------------- adversarial


def _layout(data: bytes) -> dict[str, range]:
    """Byte ranges of every field of an mlkem envelope with an integer round id (see docs/protocol.md)."""
    (hlen,) = struct.unpack(">I", data[:4])
    h = 4
    env = parse_envelope(data, max_size=1 << 24)
    dev, meth, path = len(env.device_id), len(env.method), len(env.path)
    pos = h + 17
    ranges = {
        "header_len": range(0, 4),
        "magic": range(h, h + 4),
        "version": range(h + 4, h + 6),
        "suite": range(h + 6, h + 8),
        "key_source": range(h + 8, h + 9),
        "timestamp": range(h + 9, h + 17),
        "nonce_len": range(pos, pos + 1),
        "nonce": range(pos + 1, pos + 17),
    }
    pos += 17
    ranges["device_id"] = range(pos, pos + 1 + dev)
    pos += 1 + dev
    ranges["method"] = range(pos, pos + 1 + meth)
    pos += 1 + meth
    ranges["path"] = range(pos, pos + 2 + path)
    pos += 2 + path
    ranges["round_id"] = range(pos, pos + 9)
    pos += 9
    ranges["key_ids"] = range(pos, pos + 1)
    pos += 1
    ranges["kem_ct_len"] = range(pos, pos + 2)
    ranges["kem_ct"] = range(pos + 2, pos + 2 + 1120)
    assert pos + 2 + 1120 == h + hlen
    b = h + hlen
    (blen,) = struct.unpack(">I", data[b : b + 4])
    ranges["body_len"] = range(b, b + 4)
    ranges["body"] = range(b + 4, b + 4 + blen)
    s = b + 4 + blen
    ranges["sig_len"] = range(s, s + 2)
    ranges["sig"] = range(s + 2, len(data))
    assert len(ranges["sig"]) == 3373
    return ranges


# What a one-bit flip in each field must raise, in the server's check order.
EXPECTED: dict[str, tuple[type[QFlareError], ...]] = {
    "header_len": (MalformedPayload,),
    "magic": (MalformedPayload,),
    "version": (MalformedPayload,),
    "suite": (MalformedPayload,),
    "key_source": (MalformedPayload,),
    "timestamp": (StaleRequest, InvalidSignature),
    "nonce_len": (MalformedPayload,),
    "nonce": (InvalidSignature,),
    "device_id": (MalformedPayload, InvalidSignature),
    "method": (MalformedPayload, InvalidSignature),
    "path": (MalformedPayload, InvalidSignature),
    "round_id": (MalformedPayload, InvalidSignature),
    "key_ids": (MalformedPayload,),
    "kem_ct_len": (MalformedPayload,),
    "kem_ct": (InvalidSignature,),
    "body_len": (MalformedPayload,),
    "body": (InvalidSignature,),
    "sig_len": (MalformedPayload,),
    "sig": (InvalidSignature,),
}


def _flip(data: bytes, pos: int, bit: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def test_bit_flip_in_every_field_is_rejected(device_key: SigningKey, server_key: XWingPrivateKey) -> None:
    data, _ = seal(device_key, server_key, b"0123456789abcdef" * 4)
    layout = _layout(data)
    assert set(layout) == set(EXPECTED)
    for name, positions in layout.items():
        step = 1 if len(positions) <= 64 else 7  # every byte of small fields, a stride of large ones
        for pos in list(positions)[::step] + [positions[-1]]:
            for bit in (0, 7) if step > 1 else range(8):
                with pytest.raises(EXPECTED[name]) as info:
                    server_pipeline(_flip(data, pos, bit), device_key.public_key(), server_key)
                if name == "version":
                    assert info.value.reason == "unsupported_version"
                if name == "suite":
                    assert info.value.reason == "unsupported_suite"


def test_aead_and_kem_catch_flips_even_without_the_signature(
    device_key: SigningKey, server_key: XWingPrivateKey
) -> None:
    """Defence in depth: skip the signature check; tampering still never decrypts."""
    data, _ = seal(device_key, server_key, b"secret update")
    layout = _layout(data)
    for name in ("timestamp", "nonce", "device_id", "path", "round_id", "kem_ct", "body"):
        positions = list(layout[name])
        for pos in positions[:: max(1, len(positions) // 40)]:
            try:
                env = parse_envelope(_flip(data, pos, 0), max_size=1 << 20)
            except MalformedPayload:
                continue
            with pytest.raises(DecryptionFailed):
                decrypt_envelope(env, server_key, allowed_key_sources={"mlkem"})


def test_signature_by_another_key(device_key: SigningKey, server_key: XWingPrivateKey) -> None:
    forged, _ = seal(SigningKey.generate(), server_key)
    with pytest.raises(InvalidSignature):
        server_pipeline(forged, device_key.public_key(), server_key)


def test_signature_moved_between_envelopes(device_key: SigningKey, server_key: XWingPrivateKey) -> None:
    a, _ = seal(device_key, server_key, b"a")
    b, _ = seal(device_key, server_key, b"b")
    spliced = a[:-3373] + b[-3373:]
    with pytest.raises(InvalidSignature):
        server_pipeline(spliced, device_key.public_key(), server_key)


def test_kem_ciphertext_for_another_server(device_key: SigningKey, server_key: XWingPrivateKey) -> None:
    other_server = XWingPrivateKey.generate()
    data, _ = seal(device_key, other_server)  # correctly signed, encrypted to someone else
    with pytest.raises(DecryptionFailed):
        server_pipeline(data, device_key.public_key(), server_key)


def test_lowered_version_is_refused(device_key: SigningKey, server_key: XWingPrivateKey) -> None:
    data, _ = seal(device_key, server_key)
    for version in (0, 2):
        patched = data[:8] + struct.pack(">H", version) + data[10:]
        with pytest.raises(MalformedPayload) as info:
            parse_envelope(patched, max_size=1 << 20)
        assert info.value.reason == "unsupported_version"
    with pytest.raises(MalformedPayload) as info:
        parse_envelope(data, max_size=1 << 20, accepted_suites=())
    assert info.value.reason == "unsupported_suite"


def test_truncated_and_oversized(device_key: SigningKey, server_key: XWingPrivateKey) -> None:
    data, _ = seal(device_key, server_key, b"x" * 100)
    for cut in list(range(0, 40)) + list(range(40, len(data), 97)) + [len(data) - 1]:
        with pytest.raises(MalformedPayload):
            parse_envelope(data[:cut], max_size=1 << 20)
    with pytest.raises(MalformedPayload):
        parse_envelope(data + b"\x00", max_size=1 << 20)
    with pytest.raises(PayloadTooLarge) as info:
        parse_envelope(data, max_size=len(data) - 1)
    assert info.value.reason == "payload_too_large"
    parse_envelope(data, max_size=len(data))
    huge_header_len = struct.pack(">I", 2**31) + data[4:]
    with pytest.raises(MalformedPayload):
        parse_envelope(huge_header_len, max_size=1 << 20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=6000))
def test_random_bytes_only_raise_qflare_errors(
    device_key: SigningKey, server_key: XWingPrivateKey, data: bytes
) -> None:
    try:
        server_pipeline(data, device_key.public_key(), server_key)
    except QFlareError:
        pass
    else:  # pragma: no cover
        pytest.fail("random bytes were accepted")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200), cut=st.integers(0, 6000))
def test_mutated_envelopes_only_raise_qflare_errors(
    device_key: SigningKey, server_key: XWingPrivateKey, data: bytes, cut: int
) -> None:
    valid, _ = seal(device_key, server_key)
    cut = min(cut, len(valid))
    mutated = valid[:cut] + data + valid[cut + len(data) :]
    if mutated == valid:
        return
    with pytest.raises(QFlareError):
        server_pipeline(mutated, device_key.public_key(), server_key)


# ---------------------------------------------------------------------------------------- responses


def test_response_from_another_request_does_not_open(device_key: SigningKey, server_key: XWingPrivateKey) -> None:
    data_a, opener_a = seal(device_key, server_key, b"a")
    data_b, opener_b = seal(device_key, server_key, b"b")
    _, sealer_a = server_pipeline(data_a, device_key.public_key(), server_key)
    _, sealer_b = server_pipeline(data_b, device_key.public_key(), server_key)
    resp_a, resp_b = sealer_a.seal(b"model for a"), sealer_b.seal(b"model for b")
    assert opener_a.open(resp_a) == b"model for a"
    with pytest.raises(DecryptionFailed):
        opener_a.open(resp_b)
    with pytest.raises(DecryptionFailed):
        opener_b.open(resp_a)


def test_response_tampering_and_format(device_key: SigningKey, server_key: XWingPrivateKey) -> None:
    data, opener = seal(device_key, server_key)
    _, sealer = server_pipeline(data, device_key.public_key(), server_key)
    response = sealer.seal(b"global model v8")
    for pos in range(8, len(response)):
        with pytest.raises(DecryptionFailed):
            opener.open(_flip(response, pos, 3))
    for pos in range(0, 8):
        with pytest.raises(MalformedPayload):
            opener.open(_flip(response, pos, 3))
    for bad in (b"", response[:20], response[:-1]):
        with pytest.raises((MalformedPayload, DecryptionFailed)):
            opener.open(bad)
    with pytest.raises(CryptoError) as info:
        sealer.seal(b"second response")
    assert info.value.reason == "response_already_sealed"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_random_response_bytes_only_raise_qflare_errors(
    device_key: SigningKey, server_key: XWingPrivateKey, data: bytes
) -> None:
    _, opener = seal(device_key, server_key)
    with pytest.raises(QFlareError):
        opener.open(data)
