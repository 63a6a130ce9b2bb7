"""An independent client written only from docs/protocol.md, against a real server app in process.

Everything the page specifies as bytes is built here with ``cryptography`` primitives: the header (section
3), transcript hash and key schedule (4), AEAD body and signature message (5), framing (2), response
opening (6), errors (13), the enrollment statement (14), the quote checks and report data (15) and the
enclave statements (16). ``qflare.crypto`` is used only for the primitives the page defines by reference:
X-Wing encapsulation (1.1) and composite signing/verification (1.2). ``qflare`` is otherwise used only to
start the server and, in the vector tests, to cross-check that the page and the code agree.

Regenerate the vectors (only when the format changes): ``python -m tests.protocol.test_independent_client``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qflare.crypto import SigningContext, SigningKey, VerifyKey, XWingPublicKey
from tests.server.conftest import ADMIN, Harness, make_harness

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "protocol"
ENVELOPE_MEDIA = "application/vnd.qflare.envelope"
RESPONSE_MEDIA = "application/vnd.qflare.response"
OPERATOR = {"Authorization": f"Bearer {ADMIN}"}

# ---------------------------------------------------------------------------------------------------
# The page's constructions (sections 2-6, 14-16), written from the doc.
# ---------------------------------------------------------------------------------------------------

KEY_SOURCES = {"mlkem": 1, "qkd": 2, "hybrid": 3}


def u8(n: int) -> bytes:
    return struct.pack(">B", n)


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def encode_header(*, key_source: str, timestamp_ms: int, nonce: bytes, device_id: str, method: str, path: str,
                  round_id: int | str | None, key_ids: tuple[str, ...], kem_ciphertext: bytes,
                  version: int = 1, suite: int = 1) -> bytes:
    """Section 3, field by field."""
    out = b"QFRQ" + u16(version) + u16(suite) + u8(KEY_SOURCES[key_source]) + u64(timestamp_ms)
    out += u8(len(nonce)) + nonce
    out += u8(len(device_id)) + device_id.encode("ascii")
    out += u8(len(method)) + method.encode("ascii")
    out += u16(len(path)) + path.encode("ascii")
    if round_id is None:
        out += u8(0)
    elif isinstance(round_id, int):
        out += u8(2) + u64(round_id)
    else:
        out += u8(1) + u8(len(round_id)) + round_id.encode("ascii")
    out += u8(len(key_ids)) + b"".join(u8(len(k)) + k.encode("ascii") for k in key_ids)
    return out + u16(len(kem_ciphertext)) + kem_ciphertext


def _hmac(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def key_schedule(header: bytes, ikm: bytes) -> tuple[bytes, bytes, bytes]:
    """Section 4: (th, k_req, k_resp). HKDF-Expand of 32 bytes is one HMAC block: T(1)."""
    th = hashlib.sha256(header).digest()
    prk = _hmac(b"qflare/v1/suite1/extract", ikm)
    k_req = _hmac(prk, b"qflare/v1/suite1/k_req" + th + b"\x01")
    k_resp = _hmac(prk, b"qflare/v1/suite1/k_resp" + th + b"\x01")
    return th, k_req, k_resp


def encrypt_body(k_req: bytes, header: bytes, payload: bytes, n: bytes) -> bytes:
    """Section 5: n || AES-256-GCM(k_req, n, payload, aad = header)."""
    return n + AESGCM(k_req).encrypt(n, payload, header)


def signed_message(header: bytes, body: bytes) -> bytes:
    return header + hashlib.sha256(body).digest()


def frame(header: bytes, body: bytes, sig: bytes) -> bytes:
    """Section 2."""
    return u32(len(header)) + header + u32(len(body)) + body + u16(len(sig)) + sig


def response_aad(th: bytes) -> bytes:
    return b"QFRS" + u16(1) + u16(1) + th


def seal_response(k_resp: bytes, th: bytes, payload: bytes, n: bytes) -> bytes:
    """Section 6 (the server's side; used for the vectors)."""
    return b"QFRS" + u16(1) + u16(1) + n + AESGCM(k_resp).encrypt(n, payload, response_aad(th))


def open_response(k_resp: bytes, th: bytes, response: bytes) -> bytes:
    """Section 6: check the prefix, then AES-GCM open under aad = prefix || th."""
    assert response[:8] == b"QFRS" + u16(1) + u16(1), "not a v1 suite-1 response"
    n = response[8:20]
    return AESGCM(k_resp).decrypt(n, response[20:], response_aad(th))


def fingerprint(raw_public_key: bytes) -> str:
    """Section 9."""
    d = hashlib.sha256(raw_public_key).hexdigest()[:32]
    return ":".join(d[i : i + 4] for i in range(0, 32, 4))


def public_key_file(raw: bytes, alg: str = "id-MLDSA65-Ed25519-SHA512") -> str:
    """Section 9: the six fields of a public key file."""
    return json.dumps({"format": "qflare-key", "version": 1, "type": "public", "alg": alg,
                       "public_key": base64.b64encode(raw).decode(), "fingerprint": fingerprint(raw)})


def enrollment_statement(device_id: str, token: str, public_key: bytes) -> bytes:
    """Section 14.2."""
    return (b"qflare-enroll-v1\x00" + device_id.encode("ascii") + b"\x00"
            + hashlib.sha256(token.encode("utf-8")).digest() + public_key)


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def task_statement(round_id: int, model_sha256: str, deadline_at: float) -> bytes:
    """Section 16."""
    return canonical({"type": "qflare.round-task/1", "round_id": round_id, "model_sha256": model_sha256,
                      "deadline_ms": int(round(deadline_at * 1000))})


def model_statement(round_id: int, model_sha256: str) -> bytes:
    return canonical({"type": "qflare.global-model/1", "round_id": round_id, "model_sha256": model_sha256})


def encode_enclave_keys(kem: bytes, sig: bytes) -> bytes:
    """Section 15: EnclavePublicKeys."""
    return u16(len(kem)) + kem + u16(len(sig)) + sig


def report_data(enclave_keys: bytes, nonce: bytes) -> bytes:
    return hashlib.sha512(b"qflare/v1/report-data\x00" + enclave_keys + nonce).digest()


def update_file(arrays: dict[str, np.ndarray], num_examples: int | str, train_loss: str | None = "0.5",
                order: list[str] | None = None) -> bytes:
    """Section 12, with the safetensors library only."""
    meta = {"num_examples": str(num_examples), "qflare.order": json.dumps(order or list(arrays),
                                                                          separators=(",", ":"))}
    if train_loss is not None:
        meta["train_loss"] = train_loss
    return safetensors.numpy.save(arrays, metadata=meta)


# ---------------------------------------------------------------------------------------------------
# The client (sections 10-13).
# ---------------------------------------------------------------------------------------------------


@dataclass
class Sent:
    """One device request: what was sent and what came back (opened if sealed)."""

    status: int
    content_type: str
    body: bytes  # the opened plaintext when sealed and it opened, else the raw body
    sealed: bool
    envelope: bytes
    header: bytes
    nonce: bytes
    kem_ct: bytes
    ss: bytes
    raw: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def reason(self) -> str:
        return str(self.json()["error"]["reason"])


@dataclass
class Device:
    http: Any
    device_id: str
    key: SigningKey
    server_kem: bytes  # raw X-Wing public key (1216 bytes)
    clock: Any
    sent: list[Sent] = field(default_factory=list)
    built: dict[bytes, tuple[bytes, bytes, bytes, bytes]] = field(default_factory=dict, repr=False)

    def build(self, target: str, payload: bytes = b"", *, round_id: int | None = None, now: float | None = None,
              nonce: bytes | None = None, kem: tuple[bytes, bytes] | None = None, sign_with: SigningKey | None = None,
              k_req_override: bytes | None = None, method: str = "POST") -> tuple[bytes, bytes, bytes, bytes, bytes]:
        """(envelope, header, k_resp, kem ciphertext, ss) for one request."""
        ss, ct = kem if kem is not None else XWingPublicKey.from_bytes(self.server_kem).encapsulate()
        nonce = nonce if nonce is not None else os.urandom(16)
        ts = int(round((self.clock() if now is None else now) * 1000))
        header = encode_header(key_source="mlkem", timestamp_ms=ts, nonce=nonce, device_id=self.device_id,
                               method=method, path=target, round_id=round_id, key_ids=(), kem_ciphertext=ct)
        th, k_req, k_resp = key_schedule(header, ss)
        body = encrypt_body(k_req_override or k_req, header, payload, os.urandom(12))
        sig = (sign_with or self.key).sign(signed_message(header, body), SigningContext.REQUEST)
        env = frame(header, body, sig)
        self.built[env] = (header, k_resp, ct, ss)
        return env, header, k_resp, ct, ss

    def post(self, target: str, payload: bytes = b"", *, send_to: str | None = None, envelope: bytes | None = None,
             **kw: Any) -> Sent:
        """Send a new envelope for ``target`` (or re-send ``envelope`` as built before), to ``send_to``."""
        env = envelope if envelope is not None else self.build(target, payload, **kw)[0]
        header, k_resp, ct, ss = self.built[env]
        r = self.http.post(send_to or target, content=env, headers={"Content-Type": ENVELOPE_MEDIA})
        ctype = r.headers.get("content-type", "")
        sealed, body = False, r.content
        if ctype.startswith(RESPONSE_MEDIA):
            body = open_response(k_resp, hashlib.sha256(header).digest(), r.content)
            sealed = True
        s = Sent(r.status_code, ctype, body, sealed, env, header, header[18:34], ct, ss, r.content)
        self.sent.append(s)
        return s

    def ok_json(self, target: str, payload: bytes = b"", **kw: Any) -> dict[str, Any]:
        s = self.post(target, payload, **kw)
        assert s.status == 200 and s.sealed, (s.status, s.body[:300])
        obj = s.json()
        assert isinstance(obj, dict)
        return obj


def fetch_server_kem(http: Any) -> tuple[bytes, float]:
    """Section 11.1: the X-Wing key from its key file (fingerprint checked) and the timestamp window."""
    r = http.get("/v1/server/keys")
    assert r.status_code == 200
    doc = r.json()
    keyfile = json.loads(doc["kem_public_key"])
    assert set(keyfile) == {"format", "version", "type", "alg", "public_key", "fingerprint"}
    assert (keyfile["format"], keyfile["version"], keyfile["type"], keyfile["alg"]) == (
        "qflare-key", 1, "public", "X-Wing")
    raw = base64.b64decode(keyfile["public_key"])
    assert len(raw) == 1216
    assert fingerprint(raw) == keyfile["fingerprint"] == doc["kem_fingerprint"]
    return raw, float(doc["timestamp_window_seconds"])


def admin_enroll(http: Any, device_id: str, key: SigningKey, key_source: str = "mlkem") -> dict[str, Any]:
    r = http.post("/v1/admin/devices", headers=OPERATOR, json={
        "device_id": device_id, "public_key": public_key_file(key.public_key().to_bytes()), "key_source": key_source})
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def assert_plain(s: Sent, status: int, reason: str) -> None:
    assert (s.status, s.sealed) == (status, False), (s.status, s.content_type, s.body[:300])
    assert s.content_type.startswith("application/json")
    assert s.reason == reason, s.body


def assert_sealed(s: Sent, status: int, reason: str) -> None:
    assert (s.status, s.sealed) == (status, True), (s.status, s.content_type, s.body[:300])
    assert set(s.json()) == {"error"} and set(s.json()["error"]) == {"reason", "message"}
    assert s.reason == reason, s.body


# ---------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------

IDS = ("edge_0", "edge_1", "edge_2")


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {d: SigningKey.generate() for d in (*IDS, "edge_3", "stranger")}


def _harness(tmp_path: Path, keys: dict[str, SigningKey], **kw: Any) -> Iterator[Harness]:
    yield from make_harness(tmp_path, {d: keys[d] for d in IDS}, enroll_devices=False, **kw)


@pytest.fixture
def h(tmp_path: Path, keys: dict[str, SigningKey]) -> Iterator[Harness]:
    yield from _harness(tmp_path, keys)


def devices(h: Harness, keys: dict[str, SigningKey], ids: tuple[str, ...] = IDS, *, enroll: bool = True
            ) -> dict[str, Device]:
    kem, _ = fetch_server_kem(h.client)
    out = {}
    for d in ids:
        if enroll:
            admin_enroll(h.client, d, keys[d])
        out[d] = Device(h.client, d, keys[d], kem, h.clock)
    return out


def open_round(h: Harness, devs: dict[str, Device]) -> int:
    for dev in devs.values():
        hb = dev.ok_json("/v1/device/heartbeat")
        assert hb["device_id"] == dev.device_id and hb["server_time"] == h.clock()
    h.state.orchestrator.tick()
    task = devs[IDS[0]].ok_json("/v1/device/task")
    assert task["status"] == "train"
    return int(task["round_id"])


def download(dev: Device, task: dict[str, Any]) -> tuple[bytes, dict[str, np.ndarray]]:
    s = dev.post(f"/v1/device/model/{task['model_version']}")
    assert s.status == 200 and s.sealed and s.content_type.startswith(RESPONSE_MEDIA)
    assert hashlib.sha256(s.body).hexdigest() == task["model_sha256"]
    return s.body, safetensors.numpy.load(s.body)


def upload_target(round_id: int) -> str:
    return f"/v1/device/rounds/{round_id}/update"


# ---------------------------------------------------------------------------------------------------
# Tests against the server
# ---------------------------------------------------------------------------------------------------


def test_operator_enrollment_then_heartbeat_task_model_and_upload(h: Harness, keys: dict[str, SigningKey]) -> None:
    """Sections 10, 11, 12 (and 1-6: the server accepts these bytes and we open what it seals)."""
    kem, window = fetch_server_kem(h.client)
    assert window == h.state.config.server.timestamp_window_seconds
    rec = admin_enroll(h.client, "edge_0", keys["edge_0"])
    assert rec["device_id"] == "edge_0" and rec["status"] == "active" and rec["key_source"] == "mlkem"
    assert rec["fingerprint"] == fingerprint(keys["edge_0"].public_key().to_bytes())
    devs = {"edge_0": Device(h.client, "edge_0", keys["edge_0"], kem, h.clock)}
    devs.update(devices(h, keys, IDS[1:]))

    # Before any round: wait.
    t = devs["edge_0"].ok_json("/v1/device/task")
    assert t["status"] == "wait" and t["retry_after"] > 0 and t["round_id"] is None

    rid = open_round(h, devs)
    dev = devs["edge_0"]
    task = dev.ok_json("/v1/device/task")
    assert set(task) == {"status", "retry_after", "server_time", "round_id", "model_version", "model_sha256",
                         "deadline_at", "train_config", "task_signature", "model_signature", "model_round_id",
                         "reason", "waited", "mode", "staleness_exponent", "max_staleness"}
    assert task["mode"] == "sync" and task["staleness_exponent"] is None and task["max_staleness"] is None
    assert task["waited"] is None  # no ?wait=: not held
    assert task["round_id"] == rid and task["retry_after"] == 0 and task["model_version"] == 0
    assert task["task_signature"] is None and task["model_signature"] is None  # no enclave
    blob, arrays = download(dev, task)
    assert task["deadline_at"] > h.clock()

    update = update_file({k: (v * 0.5).astype(v.dtype) for k, v in arrays.items()}, 42, "0.25")
    out = dev.ok_json(upload_target(rid), update, round_id=rid)
    ledger = {k: out.pop(k) for k in ("ledger_index", "ledger_leaf_hash", "ledger_entry")}  # docs/protocol.md 11.5
    assert out == {"round_id": rid, "device_id": "edge_0", "sha256": hashlib.sha256(update).hexdigest(),
                   "num_examples": 42}
    assert isinstance(ledger["ledger_index"], int) and len(ledger["ledger_leaf_hash"]) == 64
    # The entry (docs/ledger.md): RFC 9162 leaf hash SHA-256(0x00 || entry), canonical JSON after the version line.
    entry = base64.b64decode(ledger["ledger_entry"])
    assert hashlib.sha256(b"\x00" + entry).hexdigest() == ledger["ledger_leaf_hash"]
    version, _, body = entry.partition(b"\n")
    fields = json.loads(body)
    assert version == b"qflare-ledger-entry/v1"
    assert body == json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    assert (fields["event"], fields["device_id"], fields["round_id"], fields["envelope_sha256"],
            fields["sample_count"]) == ("update_accepted", "edge_0", rid, hashlib.sha256(update).hexdigest(), 42)
    assert len(fields["producer_signature"]) == 2 * 3373
    # Once uploaded, the device waits.
    assert dev.ok_json("/v1/device/task")["status"] == "wait"
    # A target with a query is signed as such and accepted (section 10.2).
    assert dev.post("/v1/device/heartbeat?probe=1").status == 200


def test_self_enrollment_with_a_token(h: Harness, keys: dict[str, SigningKey]) -> None:
    """Section 14.2."""
    r = h.client.post("/v1/admin/enrollment-tokens", headers=OPERATOR,
                      json={"device_id": "edge_1", "ttl_seconds": 600, "key_source": "mlkem"})
    assert r.status_code == 201, r.text
    tok = r.json()
    assert tok["device_id"] == "edge_1" and tok["expires_at"] == h.clock() + 600 and len(tok["token"]) == 43
    key = keys["edge_1"]
    pub = key.public_key().to_bytes()

    def enroll(device_id: str, token: str, sig: bytes, k: SigningKey = key) -> Any:
        return h.client.post("/v1/enroll", json={
            "device_id": device_id, "public_key": public_key_file(k.public_key().to_bytes()), "token": token,
            "signature": base64.b64encode(sig).decode()})

    good = key.sign(enrollment_statement("edge_1", tok["token"], pub), SigningContext.ENROLLMENT)
    wrong_ctx = key.sign(enrollment_statement("edge_1", tok["token"], pub), SigningContext.REQUEST)
    bad = enroll("edge_1", tok["token"], wrong_ctx)
    assert (bad.status_code, bad.json()["error"]["reason"]) == (401, "bad_signature")
    other = key.sign(enrollment_statement("edge_2", tok["token"], pub), SigningContext.ENROLLMENT)
    assert enroll("edge_2", tok["token"], other).json()["error"]["reason"] == "bad_enrollment_token"
    r = h.client.post("/v1/enroll", json={"device_id": "edge_1", "public_key": public_key_file(pub),
                                          "token": tok["token"], "signature": "not base64!"})
    assert (r.status_code, r.json()["error"]["reason"]) == (400, "bad_signature_encoding")

    ok = enroll("edge_1", tok["token"], good)
    assert ok.status_code == 201, ok.text
    assert ok.json()["device_id"] == "edge_1" and ok.json()["fingerprint"] == fingerprint(pub)
    again = enroll("edge_1", tok["token"], good)
    assert (again.status_code, again.json()["error"]["reason"]) == (401, "enrollment_token_used")

    # An unbound token, expired.
    tok2 = h.client.post("/v1/admin/enrollment-tokens", headers=OPERATOR, json={"ttl_seconds": 5}).json()
    h.clock.advance(6)
    k2 = keys["edge_2"]
    sig2 = k2.sign(enrollment_statement("edge_2", tok2["token"], k2.public_key().to_bytes()),
                   SigningContext.ENROLLMENT)
    late = enroll("edge_2", tok2["token"], sig2, k2)
    assert (late.status_code, late.json()["error"]["reason"]) == (401, "enrollment_token_expired")
    r = h.client.post("/v1/admin/enrollment-tokens", json={})
    assert (r.status_code, r.json()["error"]["reason"]) == (401, "operator_auth")

    # The self-enrolled device works.
    kem, _ = fetch_server_kem(h.client)
    assert Device(h.client, "edge_1", key, kem, h.clock).ok_json("/v1/device/heartbeat")["device_id"] == "edge_1"


def test_refusals_before_opening_are_plain_with_the_documented_status(h: Harness,
                                                                       keys: dict[str, SigningKey]) -> None:
    """Sections 7, 10.2, 13: gateway refusals are plain JSON with the documented status and reason."""
    devs = devices(h, keys, ("edge_0", "edge_1"))
    dev = devs["edge_0"]
    _, window = fetch_server_kem(h.client)
    hb = "/v1/device/heartbeat"

    # Structure and version (step 2).
    r = h.client.post(hb, content=b"\x00" * 64)
    assert (r.status_code, r.json()["error"]["reason"]) == (400, "malformed_envelope")
    ss, ct = XWingPublicKey.from_bytes(dev.server_kem).encapsulate()
    v2 = encode_header(key_source="mlkem", timestamp_ms=int(h.clock() * 1000), nonce=os.urandom(16),
                       device_id="edge_0", method="POST", path=hb, round_id=None, key_ids=(), kem_ciphertext=ct,
                       version=2)
    r = h.client.post(hb, content=frame(v2, os.urandom(40), b"\x00" * 3373))
    assert (r.status_code, r.json()["error"]["reason"]) == (400, "unsupported_version")

    # Binding (step 3): another target, an added query, another percent-encoding, another round.
    env, *_ = dev.build(hb)
    assert_plain(dev.post(hb, envelope=env, send_to="/v1/device/task"), 403, "path_mismatch")
    assert_plain(dev.post(hb, envelope=env, send_to=hb + "?x=1"), 403, "path_mismatch")
    assert_plain(dev.post(hb, envelope=env, send_to="/v1/device/%68eartbeat"), 403, "path_mismatch")
    assert_plain(dev.post(upload_target(1), b"x", round_id=None), 403, "round_mismatch")
    assert_plain(dev.post(upload_target(1), b"x", round_id=2), 403, "round_mismatch")
    assert_plain(dev.post(hb, round_id=1), 403, "round_mismatch")
    # The refused envelope was not recorded: the same bytes to the right target pass.
    assert dev.post(hb, envelope=env).status == 200

    # Timestamp window (step 4), as published by /v1/server/keys.
    assert_plain(dev.post(hb, now=h.clock() - window - 0.001), 401, "stale_timestamp")
    assert_plain(dev.post(hb, now=h.clock() + window + 0.001), 401, "future_timestamp")
    assert dev.post(hb, now=h.clock() - window).status == 200

    # Signature (step 5): unknown device and bad signature get one answer.
    stranger = Device(h.client, "stranger", keys["stranger"], dev.server_kem, h.clock)
    unknown = stranger.post(hb)
    forged = dev.post(hb, sign_with=keys["stranger"])
    assert_plain(unknown, 401, "unauthenticated")
    assert_plain(forged, 401, "unauthenticated")
    assert unknown.json() == forged.json()

    # Replay and KEM ciphertext reuse (step 8).
    env, *_ = dev.build(hb)
    assert dev.post(hb, envelope=env).status == 200
    assert_plain(dev.post(hb, envelope=env), 409, "replay")
    first = dev.post(hb)
    assert first.status == 200
    nonce = os.urandom(16)
    assert_plain(dev.post(hb, kem=(first.ss, first.kem_ct), nonce=nonce), 409, "kem_ciphertext_reused")
    # Across devices too, and the refused request's nonce was not recorded (both or neither).
    assert_plain(devs["edge_1"].post(hb, kem=(first.ss, first.kem_ct)), 409, "kem_ciphertext_reused")
    assert dev.post(hb, nonce=nonce).status == 200

    # Key source (step 7).
    admin_enroll(h.client, "edge_2", keys["edge_2"], key_source="hybrid")
    assert_plain(Device(h.client, "edge_2", keys["edge_2"], dev.server_kem, h.clock).post(hb), 403,
                 "key_source_not_allowed")

    # Revocation (step 6): after the signature, so a bad signature stays 401.
    r = h.client.post("/v1/admin/devices/edge_1/revoke", headers=OPERATOR)
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    assert_plain(devs["edge_1"].post(hb), 403, "device_revoked")
    assert_plain(devs["edge_1"].post(hb, sign_with=keys["stranger"]), 401, "unauthenticated")

    # A route without an envelope body is still a device route: bytes, not JSON.
    r = h.client.post(hb, json={"hello": 1})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")


def test_a_validly_signed_request_keeps_its_nonce_when_decryption_fails(h: Harness,
                                                                         keys: dict[str, SigningKey]) -> None:
    """Section 7: the documented exception to "a refusal changes no state"."""
    dev = devices(h, keys, ("edge_0",))["edge_0"]
    nonce = os.urandom(16)
    assert_plain(dev.post("/v1/device/heartbeat", nonce=nonce, k_req_override=os.urandom(32)), 401,
                 "decryption_failed")
    assert_plain(dev.post("/v1/device/heartbeat", nonce=nonce), 409, "replay")
    assert dev.post("/v1/device/heartbeat").status == 200


def test_size_limits(h: Harness, keys: dict[str, SigningKey]) -> None:
    """Section 10.3."""
    dev = devices(h, keys, ("edge_0",))["edge_0"]
    limit = h.state.config.server.max_request_bytes
    s = dev.post("/v1/device/heartbeat", b"\x00" * limit)
    assert_plain(s, 413, "payload_too_large")
    ulimit = h.state.config.server.max_update_bytes
    assert_plain(dev.post(upload_target(1), b"\x00" * ulimit, round_id=1), 413, "payload_too_large")


def test_sealed_route_refusals(h: Harness, keys: dict[str, SigningKey]) -> None:
    """Sections 11.4, 11.5, 12, 13.2: refusals after opening come back sealed under the request's key."""
    devs = devices(h, keys)
    rid = open_round(h, devs)
    dev = devs["edge_0"]
    task = dev.ok_json("/v1/device/task")
    _, arrays = download(dev, task)
    names = list(arrays)

    assert_sealed(dev.post("/v1/device/model/99"), 404, "unknown_model_version")
    assert_sealed(dev.post(upload_target(99), b"x", round_id=99), 404, "unknown_round")
    up = upload_target(rid)
    assert_sealed(dev.post(up, b"not safetensors", round_id=rid), 400, "malformed_tensor")
    assert_sealed(dev.post(up, update_file(arrays, 0), round_id=rid), 422, "bad_num_examples")
    assert_sealed(dev.post(up, update_file(arrays, 10_000_001), round_id=rid), 422, "bad_num_examples")
    assert_sealed(dev.post(up, update_file(arrays, "ten"), round_id=rid), 400, "bad_num_examples")
    no_n = safetensors.numpy.save(arrays, metadata={"train_loss": "0.5"})
    assert_sealed(dev.post(up, no_n, round_id=rid), 400, "missing_num_examples")
    assert_sealed(dev.post(up, update_file(arrays, 5, "nan"), round_id=rid), 422, "bad_train_loss")
    assert_sealed(dev.post(up, update_file(arrays, 5, order=names[:-1]), round_id=rid), 400, "malformed_tensor")
    assert_sealed(dev.post(up, update_file(dict(list(arrays.items())[:-1]), 5), round_id=rid), 422,
                  "missing_tensor")
    # Bounds are inclusive; the optional train_loss may be left out; qflare.order may be left out.
    assert dev.post(up, update_file(arrays, 10_000_000, None), round_id=rid).status == 200
    assert_sealed(dev.post(up, update_file(arrays, 1), round_id=rid), 409, "duplicate_update")

    # A device enrolled after the round opened is not selected.
    late = devices(h, keys, ("edge_3",))["edge_3"]
    assert_sealed(late.post(up, update_file(arrays, 1), round_id=rid), 403, "not_selected")

    # The round closes (quorum 2 at the deadline); a late upload is a sealed round_closed.
    plain = safetensors.numpy.save(arrays, metadata={"num_examples": "1"})
    assert devs["edge_1"].post(up, plain, round_id=rid).status == 200
    h.clock.advance(h.state.config.rounds.deadline_seconds + 1)
    h.state.orchestrator.tick()
    closed = devs["edge_2"].post(up, update_file(arrays, 3), round_id=rid)
    assert_sealed(closed, 409, "round_closed")
    # Sealed for this request only: another request's keys do not open it.
    other = devs["edge_2"].sent[0]
    _, _, k_other = key_schedule(other.header, other.ss)
    with pytest.raises(InvalidTag):
        open_response(k_other, hashlib.sha256(other.header).digest(), closed.raw)


# ---------------------------------------------------------------------------------------------------
# The enclave: attestation (section 15) and signed statements (section 16)
# ---------------------------------------------------------------------------------------------------


def verify_simulated_quote(quote: bytes, public_keys: bytes, nonce: bytes, *, trust_root: VerifyKey,
                           measurement: str, signer: str) -> tuple[bytes, bytes]:
    """Section 15, simulated format; returns (kem key, signing key) from the served public keys."""
    assert quote[:4] == b"QFQT"
    (blen,) = struct.unpack(">I", quote[4:8])
    body = quote[8 : 8 + blen]
    (slen,) = struct.unpack(">H", quote[8 + blen : 10 + blen])
    sig = quote[10 + blen :]
    assert len(body) == blen and len(sig) == slen == 3373
    fields = json.loads(body)
    assert canonical(fields) == body
    assert set(fields) == {"debug", "format", "isv_prod_id", "isv_svn", "measurement", "nonce", "report_data",
                           "signer", "simulated"}
    assert fields["format"] == "qflare-sim-quote/1" and fields["simulated"] is True
    trust_root.verify(sig, body, SigningContext.ATTESTATION_QUOTE)
    assert fields["debug"] is False
    assert fields["measurement"] == measurement and fields["signer"] == signer
    assert fields["nonce"] == nonce.hex()
    assert fields["report_data"] == report_data(public_keys, nonce).hex()
    (klen,) = struct.unpack(">H", public_keys[:2])
    kem = public_keys[2 : 2 + klen]
    (sklen,) = struct.unpack(">H", public_keys[2 + klen : 4 + klen])
    signing = public_keys[4 + klen :]
    assert (klen, sklen, len(signing)) == (1216, 1984, 1984)
    return kem, signing


@pytest.mark.slow
def test_enclave_attestation_signed_task_and_model(tmp_path: Path, keys: dict[str, SigningKey]) -> None:
    """Sections 10.4, 15, 16 against the simulated enclave."""
    from qflare.enclave.launcher import load_or_create_signing_key, read_trust_root
    from qflare.enclave.measurement import measure, signer_id
    from qflare.server.app import enclave_config_for

    for h in _harness(tmp_path, keys, enclave=True):
        # What the device pins, out of band.
        work = Path(h.state.config.enclave.work_dir)
        pinned_measurement = measure(enclave_config_for(h.state.config)).hex
        pinned_signer = signer_id(load_or_create_signing_key(work / "signer-dev-key.json").public_key().to_bytes()
                                  ).hex()
        root = read_trust_root(work / "platform")

        nonce = os.urandom(32)
        r = h.client.get("/v1/enclave/attestation", params={"nonce": nonce.hex()})
        assert r.status_code == 200, r.text
        att = r.json()
        public_keys = base64.b64decode(att["public_keys"])
        kem, signing_raw = verify_simulated_quote(base64.b64decode(att["quote"]), public_keys, nonce,
                                                  trust_root=root, measurement=pinned_measurement,
                                                  signer=pinned_signer)
        assert att["simulated"] is True and att["measurement"] == pinned_measurement
        served, _ = fetch_server_kem(h.client)
        assert served == kem  # the server's KEM key is the attested enclave's
        enclave_key = VerifyKey.from_bytes(signing_raw)
        # A stale quote (another nonce) does not bind these keys to our challenge.
        assert report_data(public_keys, os.urandom(32)) != report_data(public_keys, nonce)

        devs = {}
        for d in IDS:
            admin_enroll(h.client, d, keys[d])
            devs[d] = Device(h.client, d, keys[d], kem, h.clock)
        rid = open_round(h, devs)
        for d, dev in devs.items():
            task = dev.ok_json("/v1/device/task")
            enclave_key.verify(base64.b64decode(task["task_signature"]),
                               task_statement(task["round_id"], task["model_sha256"], task["deadline_at"]),
                               SigningContext.TASK)
            assert task["model_version"] == 0 and task["model_signature"] is None
            _, arrays = download(dev, task)
            if d == "edge_0":
                # Validation inside the enclave: a sealed refusal.
                assert_sealed(dev.post(upload_target(rid), update_file(arrays, 0), round_id=rid), 422,
                              "bad_num_examples")
            out = dev.ok_json(upload_target(rid), update_file(arrays, 10), round_id=rid)
            assert out["round_id"] == rid and out["num_examples"] == 10

        # Round 2 starts from the enclave-signed model of round 1.
        rid2 = open_round(h, devs)
        task = devs["edge_0"].ok_json("/v1/device/task")
        assert task["round_id"] == rid2 and task["model_version"] == 1 and task["model_round_id"] == rid
        blob, _ = download(devs["edge_0"], task)
        sig = base64.b64decode(task["model_signature"])
        enclave_key.verify(sig, model_statement(task["model_round_id"], hashlib.sha256(blob).hexdigest()),
                           SigningContext.GLOBAL_MODEL)
        from qflare.errors import InvalidSignature

        with pytest.raises(InvalidSignature):  # the statement names the producing round, not the current one
            enclave_key.verify(sig, model_statement(rid2, hashlib.sha256(blob).hexdigest()),
                               SigningContext.GLOBAL_MODEL)


# ---------------------------------------------------------------------------------------------------
# Vectors (tests/vectors/protocol/)
# ---------------------------------------------------------------------------------------------------


def _shake(label: str, n: int) -> bytes:
    return hashlib.shake_256(b"qflare-protocol-doc-vector/" + label.encode()).digest(n)


ENVELOPE_CASES = [
    {"name": "heartbeat-null-round", "device_id": "edge_0", "path": "/v1/device/heartbeat", "round_id": None,
     "payload": ""},
    {"name": "upload-integer-round", "device_id": "edge_0", "path": "/v1/device/rounds/7/update", "round_id": 7,
     "payload": "00" * 8},
    {"name": "task-with-query", "device_id": "edge-0001", "path": "/v1/device/task?x=1", "round_id": None,
     "payload": "7b7d"},
]


def build_envelope_vectors() -> dict[str, Any]:
    from qflare.crypto.secret_access import TOKEN

    device_key = SigningKey.from_seed(_shake("device-seed", 64), TOKEN)
    cases = []
    for i, c in enumerate(ENVELOPE_CASES):
        fields = {"key_source": "mlkem", "timestamp_ms": 1767225600123 + i, "nonce": _shake(f"nonce{i}", 16).hex(),
                  "device_id": c["device_id"], "method": "POST", "path": c["path"], "round_id": c["round_id"],
                  "key_ids": [], "kem_ciphertext": _shake(f"kem-ct{i}", 1120).hex()}
        header = encode_header(**{**fields, "nonce": bytes.fromhex(fields["nonce"]),
                                  "kem_ciphertext": bytes.fromhex(fields["kem_ciphertext"]), "key_ids": ()})
        ss = _shake(f"ss{i}", 32)
        th, k_req, k_resp = key_schedule(header, ss)
        aead_nonce = _shake(f"aead{i}", 12)
        payload = bytes.fromhex(c["payload"])
        body = encrypt_body(k_req, header, payload, aead_nonce)
        message = signed_message(header, body)
        sig = device_key.sign(message, SigningContext.REQUEST)
        response_payload = b'{"ok":true}'
        resp_nonce = _shake(f"resp{i}", 12)
        cases.append({
            "name": c["name"], "fields": fields, "header": header.hex(), "transcript_hash": th.hex(),
            "xwing_shared_secret": ss.hex(), "k_req": k_req.hex(), "k_resp": k_resp.hex(),
            "aead_nonce": aead_nonce.hex(), "payload": payload.hex(), "body": body.hex(),
            "signed_message_sha256": hashlib.sha256(message).hexdigest(), "signature": sig.hex(),
            "envelope": frame(header, body, sig).hex(), "response_nonce": resp_nonce.hex(),
            "response_payload": response_payload.hex(),
            "response": seal_response(k_resp, th, response_payload, resp_nonce).hex(),
        })
    return {"description": "docs/protocol.md sections 2-6: requests to the device routes (section 10.1); the "
                           "KEM ciphertext and shared secret are fixed bytes (no X-Wing run), the ML-DSA half of "
                           "the signature is hedged (check by verification).",
            "device_public_key": device_key.public_key().to_bytes().hex(), "cases": cases}


def build_statement_vectors() -> dict[str, Any]:
    from qflare.crypto import XWingPrivateKey
    from qflare.crypto.secret_access import TOKEN

    device_key = SigningKey.from_seed(_shake("device-seed", 64), TOKEN)
    kem = XWingPrivateKey.from_seed(_shake("enclave-kem-seed", 32), TOKEN).public_key().to_bytes()
    sig = SigningKey.from_seed(_shake("enclave-sign-seed", 64), TOKEN).public_key().to_bytes()
    att_nonce = _shake("attestation-nonce", 32)
    keys_bytes = encode_enclave_keys(kem, sig)
    sha = hashlib.sha256(b"global model v0").hexdigest()
    token = "kY3vJq0pD8mN2xR5tW7zA1bC4eF6gH9iL0oP3sU5vX8"
    return {
        "description": "docs/protocol.md sections 13-16: exact bytes of the error body, the enrollment "
                       "statement, the enclave's public keys and report data, and the task and model statements.",
        "error_body": {"reason": "round_closed", "message": "round 1 is closed (aggregated)",
                       "bytes": json.dumps({"error": {"reason": "round_closed",
                                                      "message": "round 1 is closed (aggregated)"}},
                                           separators=(",", ":")).encode().hex()},
        "enrollment": {"device_id": "edge_7", "token": token,
                       "public_key": device_key.public_key().to_bytes().hex(),
                       "statement": enrollment_statement("edge_7", token, device_key.public_key().to_bytes()).hex(),
                       "context": "qflare/v1/enrollment"},
        "report_data": {"kem_public_key": kem.hex(), "signing_public_key": sig.hex(),
                        "enclave_public_keys": keys_bytes.hex(), "nonce": att_nonce.hex(),
                        "report_data": report_data(keys_bytes, att_nonce).hex()},
        "task": {"round_id": 3, "model_sha256": sha, "deadline_at": 1767225660.1235,
                 "statement": task_statement(3, sha, 1767225660.1235).decode(), "context": "qflare/v1/task"},
        "model": {"round_id": 2, "model_sha256": sha, "statement": model_statement(2, sha).decode(),
                  "context": "qflare/v1/global-model"},
    }


def _load(name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return out


def test_vectors_header_key_schedule_body_response() -> None:
    """Sections 2-6: the page-only construction reproduces the vectors, and qflare.crypto agrees."""
    from qflare.crypto.encoding import KeySource, RequestHeader
    from qflare.crypto.envelope import ResponseOpener, parse_envelope, verify_envelope_signature
    from qflare.crypto.schedule import derive_request_keys

    doc = _load("envelope_v1.json")
    device = VerifyKey.from_bytes(bytes.fromhex(doc["device_public_key"]))
    for c in doc["cases"]:
        f = c["fields"]
        header = encode_header(**{**f, "nonce": bytes.fromhex(f["nonce"]), "key_ids": tuple(f["key_ids"]),
                                  "kem_ciphertext": bytes.fromhex(f["kem_ciphertext"])})
        assert header.hex() == c["header"], c["name"]
        th, k_req, k_resp = key_schedule(header, bytes.fromhex(c["xwing_shared_secret"]))
        assert (th.hex(), k_req.hex(), k_resp.hex()) == (c["transcript_hash"], c["k_req"], c["k_resp"])
        body = encrypt_body(k_req, header, bytes.fromhex(c["payload"]), bytes.fromhex(c["aead_nonce"]))
        assert body.hex() == c["body"]
        assert hashlib.sha256(signed_message(header, body)).hexdigest() == c["signed_message_sha256"]
        sig = bytes.fromhex(c["signature"])
        device.verify(sig, signed_message(header, body), SigningContext.REQUEST)
        assert frame(header, body, sig).hex() == c["envelope"]
        resp = seal_response(k_resp, th, bytes.fromhex(c["response_payload"]), bytes.fromhex(c["response_nonce"]))
        assert resp.hex() == c["response"]
        assert open_response(k_resp, th, resp) == bytes.fromhex(c["response_payload"])
        assert len(resp) == len(c["response_payload"]) // 2 + 36

        # The code agrees with the page.
        decoded = RequestHeader.decode(header)
        assert decoded.encode() == header
        assert (decoded.device_id, decoded.method, decoded.path, decoded.round_id) == (
            f["device_id"], f["method"], f["path"], f["round_id"])
        keys = derive_request_keys(header, KeySource.MLKEM, kem_secret=bytes.fromhex(c["xwing_shared_secret"]),
                                   qkd_key=None)
        assert (keys.transcript_hash, keys.k_req, keys.k_resp) == (th, k_req, k_resp)
        env = parse_envelope(bytes.fromhex(c["envelope"]), max_size=1 << 20)
        verify_envelope_signature(env, device)
        assert ResponseOpener(keys).open(resp) == bytes.fromhex(c["response_payload"])


def test_vectors_error_and_statements() -> None:
    """Sections 13.1, 14.2, 15, 16: exact bytes, from the page and from the code."""
    from qflare.crypto import XWingPublicKey as XPub
    from qflare.enclave.quote import EnclavePublicKeys, report_data_for
    from qflare.enclave.statements import RoundTask
    from qflare.enclave.statements import model_statement as code_model_statement
    from qflare.server.enrollment import enrollment_message
    from qflare.server.errors import error_body

    doc = _load("statements_v1.json")
    e = doc["error_body"]
    mine = json.dumps({"error": {"reason": e["reason"], "message": e["message"]}}, separators=(",", ":")).encode()
    assert mine.hex() == e["bytes"]
    assert json.dumps(error_body(e["reason"], e["message"]), separators=(",", ":")).encode() == mine

    en = doc["enrollment"]
    pub = bytes.fromhex(en["public_key"])
    stmt = enrollment_statement(en["device_id"], en["token"], pub)
    assert stmt.hex() == en["statement"]
    assert enrollment_message(en["device_id"], en["token"], VerifyKey.from_bytes(pub)) == stmt
    assert SigningContext.ENROLLMENT.value.decode() == en["context"]

    rd = doc["report_data"]
    kem, sig = bytes.fromhex(rd["kem_public_key"]), bytes.fromhex(rd["signing_public_key"])
    keys_bytes = encode_enclave_keys(kem, sig)
    assert keys_bytes.hex() == rd["enclave_public_keys"] and len(keys_bytes) == 3204
    assert report_data(keys_bytes, bytes.fromhex(rd["nonce"])).hex() == rd["report_data"]
    code_keys = EnclavePublicKeys(kem=XPub.from_bytes(kem), signing=VerifyKey.from_bytes(sig))
    assert code_keys.encode() == keys_bytes
    assert report_data_for(code_keys, bytes.fromhex(rd["nonce"])).hex() == rd["report_data"]

    t = doc["task"]
    assert task_statement(t["round_id"], t["model_sha256"], t["deadline_at"]).decode() == t["statement"]
    assert RoundTask(t["round_id"], t["model_sha256"], t["deadline_at"]).to_bytes().decode() == t["statement"]
    assert SigningContext.TASK.value.decode() == t["context"]
    m = doc["model"]
    assert model_statement(m["round_id"], m["model_sha256"]).decode() == m["statement"]
    assert code_model_statement(m["round_id"], m["model_sha256"]).decode() == m["statement"]
    assert SigningContext.GLOBAL_MODEL.value.decode() == m["context"]


if __name__ == "__main__":  # pragma: no cover - regenerates the vectors
    VECTORS.mkdir(parents=True, exist_ok=True)
    (VECTORS / "envelope_v1.json").write_text(json.dumps(build_envelope_vectors(), indent=1) + "\n")
    (VECTORS / "statements_v1.json").write_text(json.dumps(build_statement_vectors(), indent=1) + "\n")
