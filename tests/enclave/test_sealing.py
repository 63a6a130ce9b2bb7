"""Sealing: MRENCLAVE-bound AES-256-GCM; another measurement, platform or one flipped bit cannot open it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.enclave.sealing import SealingKey, hkdf_sha256, read_sealed_header
from qflare.errors import CryptoError

ROOT = bytes(range(32))
MEASUREMENT_A = b"\xaa" * 32
MEASUREMENT_B = b"\xab" + b"\xaa" * 31


def test_hkdf_matches_rfc5869_test_case_1() -> None:
    # Prepare (RFC 5869, A.1)
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")

    # Execute
    okm = hkdf_sha256(ikm, salt=salt, info=info, length=42)

    # Assert
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


@settings(max_examples=40, deadline=None)
@given(plaintext=st.binary(max_size=2048), header=st.binary(max_size=64))
def test_seal_then_unseal_returns_the_plaintext(plaintext: bytes, header: bytes) -> None:
    # Prepare
    key = SealingKey(ROOT, MEASUREMENT_A)

    # Execute
    blob = key.seal(plaintext, purpose="test", header=header)

    # Assert
    assert key.unseal(blob, purpose="test") == (header, plaintext)
    assert read_sealed_header(blob, purpose="test") == header


def test_another_measurement_cannot_unseal() -> None:
    # Prepare
    blob = SealingKey(ROOT, MEASUREMENT_A).seal(b"enclave state", purpose="test")

    # Execute / Assert
    with pytest.raises(CryptoError) as err:
        SealingKey(ROOT, MEASUREMENT_B).unseal(blob, purpose="test")
    assert err.value.reason == "unseal_failed"


def test_another_platform_cannot_unseal() -> None:
    # Prepare
    blob = SealingKey(ROOT, MEASUREMENT_A).seal(b"enclave state", purpose="test")

    # Execute / Assert
    with pytest.raises(CryptoError, match="another enclave or platform"):
        SealingKey(bytes(32), MEASUREMENT_A).unseal(blob, purpose="test")


def test_every_single_bit_flip_is_refused() -> None:
    # Prepare
    key = SealingKey(ROOT, MEASUREMENT_A)
    blob = key.seal(b"accumulator checkpoint", purpose="test", header=b"round-7")

    # Execute
    refusals = set()
    for bit in range(len(blob) * 8):
        altered = bytearray(blob)
        altered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CryptoError) as err:
            key.unseal(bytes(altered), purpose="test")
        refusals.add(err.value.reason)

    # Assert
    assert refusals <= {"unseal_failed", "malformed_sealed_blob"}
    assert "unseal_failed" in refusals


def test_a_blob_cannot_be_opened_for_another_purpose() -> None:
    # Prepare
    key = SealingKey(ROOT, MEASUREMENT_A)
    blob = key.seal(b"x", purpose="update")

    # Execute / Assert
    with pytest.raises(CryptoError) as err:
        key.unseal(blob, purpose="enclave-keys")
    assert err.value.reason == "malformed_sealed_blob"


def test_each_blob_uses_a_fresh_key_id() -> None:
    # Prepare
    key = SealingKey(ROOT, MEASUREMENT_A)

    # Execute
    first, second = key.seal(b"same", purpose="t"), key.seal(b"same", purpose="t")

    # Assert
    assert first[6:22] != second[6:22]
    assert first != second
