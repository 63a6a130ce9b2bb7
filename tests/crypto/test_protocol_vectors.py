"""QFLARE envelope v1 known-answer vectors (tests/vectors/protocol_v1.json), re-derived byte for byte.

Fixed keys + UnsafeDeterministicRandomness + a replayed ML-KEM encapsulation reproduce every byte
of each envelope except the ML-DSA half of the signature (hedged signing inside OpenSSL), which is
checked by verification; the Ed25519 half is deterministic and compared exactly.
"""

from __future__ import annotations

from typing import Any

import pytest

from qflare.crypto import secret_access
from qflare.crypto.encoding import KeySource, RequestHeader
from qflare.crypto.envelope import (
    check_timestamp,
    decrypt_envelope,
    parse_envelope,
    seal_request,
    verify_envelope_signature,
)
from qflare.crypto.kem import XWingPrivateKey
from qflare.crypto.schedule import derive_request_keys
from qflare.crypto.signing import SigningKey
from qflare.crypto.testing import (
    UnsafeDeterministicRandomness,
    UnsafeMlkemReplay,
    UnsafeRandomnessWarning,
    UnsafeScriptedRandomness,
    unsafe_mlkem_decapsulate,
)

from .conftest import json_parametrize, load_vectors

TOKEN = secret_access.TOKEN
DATA = load_vectors("protocol_v1.json")
protocol_vectors = json_parametrize("protocol_v1.json", lambda d: d["cases"], "name")
MLDSA = slice(-3373, -64)


def _keys() -> tuple[SigningKey, XWingPrivateKey]:
    device = SigningKey.from_seed(bytes.fromhex(DATA["device_signing_seed"]), TOKEN)
    server = XWingPrivateKey.from_seed(bytes.fromhex(DATA["server_kem_seed"]), TOKEN)
    assert device.public_key().to_bytes().hex() == DATA["device_public_key"]
    assert server.public_key().to_bytes().hex() == DATA["server_kem_public_key"]
    return device, server


def _qkd(vector: dict[str, Any]) -> bytes | None:
    q = vector["request"]["qkd_key"]
    return bytes.fromhex(q) if q else None


@protocol_vectors
def test_vector_envelope_checks_and_decrypts(vector: dict[str, Any]) -> None:
    device, server = _keys()
    req, exp = vector["request"], vector["expected"]
    envelope = bytes.fromhex(exp["envelope"])
    env = parse_envelope(envelope, max_size=1 << 20)
    assert env.header_bytes.hex() == exp["header"]
    assert RequestHeader.decode(env.header_bytes).encode() == env.header_bytes
    assert (env.device_id, env.method, env.path, env.round_id) == (
        req["device_id"],
        req["method"],
        req["path"],
        req["round_id"],
    )
    assert env.timestamp_ms == round(req["now"] * 1000)
    assert env.key_source == KeySource(req["key_source"]) and list(env.key_ids) == req["key_ids"]
    assert env.body.hex() == exp["body"]
    check_timestamp(env, req["now"], 1)
    verify_envelope_signature(env, device.public_key())
    payload, sealer = decrypt_envelope(env, server, allowed_key_sources={env.key_source}, extra_secret=_qkd(vector))
    assert payload.hex() == req["payload"]
    with pytest.warns(UnsafeRandomnessWarning):
        with UnsafeScriptedRandomness([bytes.fromhex(vector["response_nonce"])]):
            response = sealer.seal(bytes.fromhex(vector["response_payload"]))
    assert response.hex() == exp["response"]


@protocol_vectors
def test_vector_key_schedule(vector: dict[str, Any]) -> None:
    _, server = _keys()
    exp = vector["expected"]
    header = bytes.fromhex(exp["header"])
    env = parse_envelope(bytes.fromhex(exp["envelope"]), max_size=1 << 20)
    kem_ss = None
    if env.key_source is not KeySource.QKD:
        kem_ss = server.decapsulate(env.kem_ciphertext)
        assert kem_ss.hex() == exp["kem_shared_secret"]
    keys = derive_request_keys(header, env.key_source, kem_secret=kem_ss, qkd_key=_qkd(vector))
    assert keys.transcript_hash.hex() == exp["transcript_hash"] == env.header_hash.hex()
    assert keys.k_req.hex() == exp["k_req"]
    assert keys.k_resp.hex() == exp["k_resp"]


@protocol_vectors
def test_vector_rederived_byte_for_byte(vector: dict[str, Any]) -> None:
    device, server = _keys()
    req, exp = vector["request"], vector["expected"]
    replays = []
    if vector["mlkem_replay"]:
        ct_m = bytes.fromhex(vector["mlkem_replay"]["ciphertext"])
        ss_m = bytes.fromhex(vector["mlkem_replay"]["shared_secret"])
        assert unsafe_mlkem_decapsulate(server, ct_m, TOKEN) == ss_m
        replays.append(UnsafeMlkemReplay(ct_m, ss_m))
    with pytest.warns(UnsafeRandomnessWarning):
        with UnsafeDeterministicRandomness(bytes.fromhex(vector["drbg_seed"]), mlkem_replay=replays):
            envelope, opener = seal_request(
                device,
                server.public_key(),
                device_id=req["device_id"],
                method=req["method"],
                path=req["path"],
                round_id=req["round_id"],
                payload=bytes.fromhex(req["payload"]),
                now=req["now"],
                key_source=req["key_source"],
                qkd_key=_qkd(vector),
                key_ids=req["key_ids"],
            )
    expected = bytes.fromhex(exp["envelope"])
    assert len(envelope) == len(expected)
    assert envelope[: MLDSA.start] == expected[: MLDSA.start]  # framing, header, body, sig length
    assert envelope[MLDSA.stop :] == expected[MLDSA.stop :]  # Ed25519 half
    verify_envelope_signature(parse_envelope(envelope, max_size=1 << 20), device.public_key())
    assert opener.open(bytes.fromhex(exp["response"])).hex() == vector["response_payload"]
