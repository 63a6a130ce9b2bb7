"""X-Wing: draft-connolly-cfrg-xwing-kem-10 vectors, round trips, malformed inputs."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.crypto import secret_access
from qflare.crypto._xwing import XWING_LABEL, combiner
from qflare.crypto.kem import CIPHERTEXT_SIZE, PUBLIC_KEY_SIZE, XWingPrivateKey, XWingPublicKey
from qflare.crypto.testing import (
    UnsafeMlkemReplay,
    UnsafeScriptedRandomness,
    unsafe_mlkem_decapsulate,
)
from qflare.errors import CryptoError, DecryptionFailed, MalformedPayload

from .conftest import json_parametrize

TOKEN = secret_access.TOKEN
draft_vectors = json_parametrize("xwing_draft10.json", lambda d: d["vectors"], "seed")


def test_label_is_the_drafts() -> None:
    assert XWING_LABEL == b"\\./" + b"/^\\"
    assert XWING_LABEL.hex() == "5c2e2f2f5e5c"


@draft_vectors
def test_keygen_from_seed(vector: dict[str, Any]) -> None:
    key = XWingPrivateKey.from_seed(bytes.fromhex(vector["seed"]), TOKEN)
    assert key.public_key().to_bytes().hex() == vector["pk"]


@draft_vectors
def test_decapsulate_vector(vector: dict[str, Any]) -> None:
    key = XWingPrivateKey.from_seed(bytes.fromhex(vector["seed"]), TOKEN)
    assert key.decapsulate(bytes.fromhex(vector["ct"])).hex() == vector["ss"]


@draft_vectors
def test_encapsulate_vector_with_replayed_mlkem(vector: dict[str, Any]) -> None:
    """EncapsulateDerand as far as the library allows: the X25519 half uses eseed[32:64] exactly;
    ML-KEM cannot be derandomized through ``cryptography``, so its (ct_M, ss_M) is replayed (ss_M
    recomputed by decapsulation). The output must equal the vector's (ss, ct) byte for byte."""
    key = XWingPrivateKey.from_seed(bytes.fromhex(vector["seed"]), TOKEN)
    ct = bytes.fromhex(vector["ct"])
    eseed = bytes.fromhex(vector["eseed"])
    replay = UnsafeMlkemReplay(ct[:1088], unsafe_mlkem_decapsulate(key, ct[:1088], TOKEN))
    pub = XWingPublicKey.from_bytes(bytes.fromhex(vector["pk"]))
    with pytest.warns(UserWarning), UnsafeScriptedRandomness([eseed[32:64]], mlkem_replay=[replay]):
        ss, ct_out = pub.encapsulate()
    assert ct_out == ct
    assert ss.hex() == vector["ss"]


def test_combiner_order_is_label_last() -> None:
    parts = [bytes([i]) * 32 for i in range(4)]
    assert combiner(*parts) == hashlib.sha3_256(b"".join(parts) + XWING_LABEL).digest()
    assert combiner(*parts) != hashlib.sha3_256(XWING_LABEL + b"".join(parts)).digest()


@settings(max_examples=25, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32))
def test_round_trip(seed: bytes) -> None:
    key = XWingPrivateKey.from_seed(seed, TOKEN)
    ss, ct = key.public_key().encapsulate()
    assert len(ss) == 32 and len(ct) == CIPHERTEXT_SIZE
    assert key.decapsulate(ct) == ss
    assert XWingPublicKey.from_bytes(key.public_key().to_bytes()) == key.public_key()


def test_tampered_ciphertext_gives_other_secret(server_key: XWingPrivateKey) -> None:
    ss, ct = server_key.public_key().encapsulate()
    for pos in (0, 500, 1087, 1088, 1119):
        bad = bytearray(ct)
        bad[pos] ^= 0x01
        try:
            assert server_key.decapsulate(bytes(bad)) != ss
        except DecryptionFailed:
            pass  # a flip in ct_X may land on a low-order point


def test_other_key_gives_other_secret(server_key: XWingPrivateKey) -> None:
    ss, ct = server_key.public_key().encapsulate()
    assert XWingPrivateKey.generate().decapsulate(ct) != ss


def test_malformed_inputs(server_key: XWingPrivateKey) -> None:
    with pytest.raises(MalformedPayload):
        server_key.decapsulate(b"\x00" * (CIPHERTEXT_SIZE - 1))
    with pytest.raises(MalformedPayload):
        XWingPublicKey.from_bytes(b"\x00" * (PUBLIC_KEY_SIZE + 1))
    with pytest.raises(MalformedPayload):  # ML-KEM modulus check (FIPS 203 7.2)
        XWingPublicKey.from_bytes(b"\xff" * PUBLIC_KEY_SIZE)
    _, ct = server_key.public_key().encapsulate()
    with pytest.raises(DecryptionFailed):  # low-order (zero) X25519 component
        server_key.decapsulate(ct[:1088] + bytes(32))
    low_order_pk = server_key.public_key().to_bytes()[:1184] + bytes(32)
    with pytest.raises(CryptoError):
        XWingPublicKey.from_bytes(low_order_pk).encapsulate()


def test_seed_export_needs_token(server_key: XWingPrivateKey) -> None:
    with pytest.raises(TypeError):
        server_key.private_bytes(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        XWingPrivateKey.from_seed(bytes(32), object())  # type: ignore[arg-type]
    assert len(server_key.private_bytes(TOKEN)) == 32
    assert server_key.private_bytes(TOKEN).hex() not in repr(server_key)
