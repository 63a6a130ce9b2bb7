"""Composite ML-DSA-65 + Ed25519: the LAMPS draft vector, QFLARE context vectors, properties."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.crypto import secret_access
from qflare.crypto._composite import LABEL, PREFIX, message_representative
from qflare.crypto.signing import SIGNATURE_SIZE, SigningContext, SigningKey, VerifyKey
from qflare.crypto.testing import unsafe_sign_with_raw_context, unsafe_verify_with_raw_context
from qflare.errors import InvalidSignature, MalformedPayload

from .conftest import json_parametrize, load_vectors

TOKEN = secret_access.TOKEN


def test_constants_match_the_draft() -> None:
    assert PREFIX.hex() == "436f6d706f73697465416c676f726974686d5369676e61747572657332303235"
    assert LABEL == b"COMPSIG-MLDSA65-Ed25519-SHA512"


def test_lamps_draft_vector() -> None:
    """draft-ietf-lamps-pq-composite-sigs, id-MLDSA65-Ed25519-SHA512: seed -> public key exactly,
    the published signature verifies (empty ctx), and our Ed25519 half is byte-identical (Ed25519
    is deterministic; the ML-DSA half is hedged and so only verified)."""
    v = load_vectors("composite_mldsa65_ed25519_draft.json")
    pk, sk, s, m = (base64.b64decode(v[k]) for k in ("pk", "sk", "s", "m"))
    key = SigningKey.from_seed(sk, TOKEN)
    assert key.public_key().to_bytes() == pk
    public = VerifyKey.from_bytes(pk)
    unsafe_verify_with_raw_context(public, s, m, b"")
    ours = unsafe_sign_with_raw_context(key, m, b"")
    assert ours[-64:] == s[-64:]
    unsafe_verify_with_raw_context(public, ours, m, b"")
    bad = bytearray(s)
    bad[100] ^= 1
    with pytest.raises(InvalidSignature):
        unsafe_verify_with_raw_context(public, bytes(bad), m, b"")


own_vectors = json_parametrize("composite_qflare_v1.json", lambda d: d["tests"], "context")


@own_vectors
def test_qflare_context_vectors(vector: dict[str, Any]) -> None:
    data = load_vectors("composite_qflare_v1.json")
    key = SigningKey.from_seed(bytes.fromhex(data["seed"]), TOKEN)
    assert key.public_key().to_bytes().hex() == data["public_key"]
    context = SigningContext[vector["context"]]
    message = bytes.fromhex(vector["message"])
    assert context.value.hex() == vector["ctx"]
    assert message_representative(message, context.value).hex() == vector["m_prime"]
    signature = bytes.fromhex(vector["signature"])
    key.public_key().verify(signature, message, context)
    assert key.sign(message, context)[-64:] == signature[-64:]


@settings(max_examples=30, deadline=None)
@given(message=st.binary(max_size=2048), context=st.sampled_from(list(SigningContext)))
def test_sign_verify_round_trip(device_key: SigningKey, message: bytes, context: SigningContext) -> None:
    sig = device_key.sign(message, context)
    assert len(sig) == SIGNATURE_SIZE
    device_key.public_key().verify(sig, message, context)


def test_context_separation(device_key: SigningKey) -> None:
    sig = device_key.sign(b"round 7 task", SigningContext.TASK)
    for other in SigningContext:
        if other is not SigningContext.TASK:
            with pytest.raises(InvalidSignature):
                device_key.public_key().verify(sig, b"round 7 task", other)


def test_both_components_must_verify(device_key: SigningKey) -> None:
    other = SigningKey.generate()
    msg = b"message"
    sig = device_key.sign(msg, SigningContext.REQUEST)
    foreign = other.sign(msg, SigningContext.REQUEST)
    mixed_1 = sig[:3309] + foreign[3309:]  # valid ML-DSA, foreign Ed25519
    mixed_2 = foreign[:3309] + sig[3309:]  # foreign ML-DSA, valid Ed25519
    for bad in (mixed_1, mixed_2, foreign):
        with pytest.raises(InvalidSignature):
            device_key.public_key().verify(bad, msg, SigningContext.REQUEST)


def test_bit_flips_and_lengths(device_key: SigningKey) -> None:
    msg = b"payload"
    sig = device_key.sign(msg, SigningContext.GLOBAL_MODEL)
    for pos in (0, 1000, 3308, 3309, 3340, 3372):
        bad = bytearray(sig)
        bad[pos] ^= 0x80
        with pytest.raises(InvalidSignature):
            device_key.public_key().verify(bytes(bad), msg, SigningContext.GLOBAL_MODEL)
    for bad_sig in (sig[:-1], sig + b"\x00", b""):
        with pytest.raises(InvalidSignature):
            device_key.public_key().verify(bad_sig, msg, SigningContext.GLOBAL_MODEL)
    with pytest.raises(InvalidSignature):
        device_key.public_key().verify(sig, msg + b"!", SigningContext.GLOBAL_MODEL)


def test_only_enum_contexts(device_key: SigningKey) -> None:
    with pytest.raises(TypeError):
        device_key.sign(b"x", b"qflare/v1/request")  # type: ignore[arg-type]


def test_public_key_parsing(device_key: SigningKey) -> None:
    raw = device_key.public_key().to_bytes()
    assert VerifyKey.from_bytes(raw) == device_key.public_key()
    with pytest.raises(MalformedPayload):
        VerifyKey.from_bytes(raw[:-1])


def test_seed_needs_token(device_key: SigningKey) -> None:
    with pytest.raises(TypeError):
        device_key.private_bytes("TOKEN")  # type: ignore[arg-type]
    seed = device_key.private_bytes(TOKEN)
    assert SigningKey.from_seed(seed, TOKEN).public_key() == device_key.public_key()
