"""Generate QFLARE's own known-answer vectors (run from the repository root):

    .venv/bin/python tests/vectors/generate_vectors.py

Writes ``protocol_v1.json`` (request envelopes and responses from fixed keys and fixed randomness)
and ``composite_qflare_v1.json`` (composite signatures in every QFLARE signing context).

Determinism: every random byte of the request comes from ``UnsafeDeterministicRandomness(drbg_seed)``
in this order: request nonce (16), X25519 ephemeral key (32, mlkem/hybrid only), AEAD nonce (12).
The ML-KEM encapsulation is random inside OpenSSL; the script records its ``ct_M`` and ``ss_M`` so
that tests can replay it. ML-DSA signing is hedged (randomized) in OpenSSL, so the 3309-byte ML-DSA
half of each signature is recorded as produced and checked by verification only; everything else
is re-derived byte for byte. The response AEAD nonce is recorded as ``response_nonce``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from qflare.crypto import secret_access
from qflare.crypto._composite import message_representative
from qflare.crypto.encoding import KeySource
from qflare.crypto.envelope import decrypt_envelope, parse_envelope, seal_request
from qflare.crypto.kem import XWingPrivateKey
from qflare.crypto.schedule import derive_request_keys
from qflare.crypto.signing import SigningContext, SigningKey
from qflare.crypto.testing import (
    UnsafeDeterministicRandomness,
    UnsafeScriptedRandomness,
    unsafe_mlkem_decapsulate,
)

HERE = Path(__file__).resolve().parent
TOKEN = secret_access.TOKEN


def _seed(label: str, n: int) -> bytes:
    return hashlib.shake_256(b"qflare-test-vector/" + label.encode()).digest(n)


DEVICE_SEED = _seed("device-signing-key", 64)
SERVER_SEED = _seed("server-xwing-key", 32)

CASES: list[dict[str, Any]] = [
    {
        "name": "mlkem-integer-round",
        "request": {
            "device_id": "device-0001",
            "method": "POST",
            "path": "/v1/rounds/7/updates",
            "round_id": 7,
            "now": 1767225600.123,
            "key_source": "mlkem",
            "qkd_key": None,
            "key_ids": [],
            "payload": b"model update: 4 float32 tensors".hex(),
        },
        "response_payload": b"accepted round 7".hex(),
    },
    {
        "name": "hybrid-string-round",
        "request": {
            "device_id": "edge-cam-42",
            "method": "POST",
            "path": "/v1/rounds/r-2026-01/updates?compress=none",
            "round_id": "r-2026-01",
            "now": 1767225661,
            "key_source": "hybrid",
            "qkd_key": _seed("qkd-key-hybrid", 32).hex(),
            "key_ids": ["kme-a/0001", "kme-a/0002"],
            "payload": bytes(range(256)).hex(),
        },
        "response_payload": b"\x00\x01global-model-bytes".hex(),
    },
    {
        "name": "qkd-null-round-empty-body",
        "request": {
            "device_id": "device-0002",
            "method": "GET",
            "path": "/v1/model/latest",
            "round_id": None,
            "now": 1767225700.5,
            "key_source": "qkd",
            "qkd_key": _seed("qkd-key-only", 48).hex(),
            "key_ids": ["kme-b/77"],
            "payload": "",
        },
        "response_payload": b"".hex(),
    },
]


def seal_case(case: dict[str, Any], device: SigningKey, server: XWingPrivateKey) -> Any:
    req = case["request"]
    return seal_request(
        device,
        server.public_key(),
        device_id=req["device_id"],
        method=req["method"],
        path=req["path"],
        round_id=req["round_id"],
        payload=bytes.fromhex(req["payload"]),
        now=req["now"],
        key_source=req["key_source"],
        qkd_key=bytes.fromhex(req["qkd_key"]) if req["qkd_key"] else None,
        key_ids=req["key_ids"],
    )


def protocol_vectors() -> dict[str, Any]:
    device = SigningKey.from_seed(DEVICE_SEED, TOKEN)
    server = XWingPrivateKey.from_seed(SERVER_SEED, TOKEN)
    out_cases = []
    for case in CASES:
        drbg_seed = _seed("drbg/" + case["name"], 32)
        with UnsafeDeterministicRandomness(drbg_seed):
            envelope, _ = seal_case(case, device, server)
        env = parse_envelope(envelope, max_size=1 << 20)
        source = env.key_source
        qkd = bytes.fromhex(case["request"]["qkd_key"]) if case["request"]["qkd_key"] else None
        replay = None
        kem_ss = None
        if source in (KeySource.MLKEM, KeySource.HYBRID):
            ct_m = env.kem_ciphertext[:1088]
            replay = {"ciphertext": ct_m.hex(), "shared_secret": unsafe_mlkem_decapsulate(server, ct_m, TOKEN).hex()}
            kem_ss = server.decapsulate(env.kem_ciphertext)
        keys = derive_request_keys(env.header_bytes, source, kem_secret=kem_ss, qkd_key=qkd)
        allowed = {source}
        _, sealer = decrypt_envelope(env, server, allowed_key_sources=allowed, extra_secret=qkd)
        response_nonce = _seed("response-nonce/" + case["name"], 12)
        with UnsafeScriptedRandomness([response_nonce]):
            response = sealer.seal(bytes.fromhex(case["response_payload"]))
        out_cases.append(
            {
                "name": case["name"],
                "drbg_seed": drbg_seed.hex(),
                "request": case["request"],
                "mlkem_replay": replay,
                "response_payload": case["response_payload"],
                "response_nonce": response_nonce.hex(),
                "expected": {
                    "header": env.header_bytes.hex(),
                    "transcript_hash": keys.transcript_hash.hex(),
                    "kem_shared_secret": kem_ss.hex() if kem_ss is not None else None,
                    "k_req": keys.k_req.hex(),
                    "k_resp": keys.k_resp.hex(),
                    "body": env.body.hex(),
                    "envelope": envelope.hex(),
                    "response": response.hex(),
                },
            }
        )
    return {
        "description": "QFLARE request envelope v1, suite 1 (docs/protocol.md). Generated by "
        "tests/vectors/generate_vectors.py. Only the ML-DSA half of each signature "
        "(envelope bytes [-3373:-64]) is not reproducible; it is checked by verification.",
        "device_signing_seed": DEVICE_SEED.hex(),
        "device_public_key": device.public_key().to_bytes().hex(),
        "server_kem_seed": SERVER_SEED.hex(),
        "server_kem_public_key": server.public_key().to_bytes().hex(),
        "cases": out_cases,
    }


def composite_vectors() -> dict[str, Any]:
    seed = _seed("composite-context-key", 64)
    key = SigningKey.from_seed(seed, TOKEN)
    tests = []
    for i, context in enumerate(SigningContext):
        message = hashlib.shake_256(f"message {i}".encode()).digest(40 + i)
        tests.append(
            {
                "context": context.name,
                "ctx": context.value.hex(),
                "message": message.hex(),
                "m_prime": message_representative(message, context.value).hex(),
                "signature": key.sign(message, context).hex(),
            }
        )
    return {
        "description": "Composite id-MLDSA65-Ed25519-SHA512 signatures in each QFLARE SigningContext. "
        "m_prime and the Ed25519 half (last 64 bytes) are exact; the ML-DSA half verifies.",
        "seed": seed.hex(),
        "public_key": key.public_key().to_bytes().hex(),
        "tests": tests,
    }


def main() -> int:
    (HERE / "protocol_v1.json").write_text(json.dumps(protocol_vectors(), indent=1) + "\n")
    (HERE / "composite_qflare_v1.json").write_text(json.dumps(composite_vectors(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
