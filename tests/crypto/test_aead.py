"""AES-256-GCM wrapper: hidden random nonces, required associated data, one failure type."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.crypto.aead import OVERHEAD, Aead
from qflare.errors import DecryptionFailed


@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(max_size=4096), ad=st.binary(min_size=1, max_size=64))
def test_round_trip(plaintext: bytes, ad: bytes) -> None:
    box = Aead(Aead.generate_key())
    blob = box.encrypt(plaintext, ad)
    assert len(blob) == len(plaintext) + OVERHEAD
    assert box.decrypt(blob, ad) == plaintext


def test_nonces_are_fresh() -> None:
    box = Aead(Aead.generate_key())
    blobs = {box.encrypt(b"same", b"ad")[:12] for _ in range(200)}
    assert len(blobs) == 200


def test_every_failure_is_decryption_failed() -> None:
    key = Aead.generate_key()
    box = Aead(key)
    blob = box.encrypt(b"secret", b"ad")
    cases = [
        (blob, b"other ad"),
        (blob[:-1], b"ad"),
        (blob[:10], b"ad"),
        (b"", b"ad"),
    ]
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 1
        cases.append((bytes(bad), b"ad"))
    for data, ad in cases:
        with pytest.raises(DecryptionFailed):
            box.decrypt(data, ad)
    with pytest.raises(DecryptionFailed):
        Aead(Aead.generate_key()).decrypt(blob, b"ad")


def test_associated_data_is_required() -> None:
    box = Aead(Aead.generate_key())
    with pytest.raises(ValueError):
        box.encrypt(b"x", b"")
    with pytest.raises(TypeError):
        box.encrypt(b"x")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        Aead(b"short")
    assert "key" not in repr(box).replace("<AES-256-GCM key>", "")
