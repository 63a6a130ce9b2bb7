"""What an outside ETSI GS QKD 014 V1.1.1 conformance suite checks, and three interoperability defects.

The defects were found against independent implementations: (1) the client required dec_keys answers
in request order and lost released keys on refusing them; (2) the KME without SAE restrictions
issued keys for a blank slave SAE ID and for master == slave; (3) a POST without a body was a 400.
"""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import Iterator

import httpx
import pytest

from qflare.errors import QKDError
from qflare.kme import KMEEnd, KMEListener, KMEPairServer
from qflare.qkd.client import KMEClient
from qflare.qkd.keystore import KeyStore
from qflare.qkd.pki import DemoPKI

STATUS_FIELDS = {
    "source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID", "key_size", "stored_key_count",
    "max_key_count", "max_key_per_request", "max_key_size", "min_key_size", "max_SAE_ID_count",
}  # fmt: skip


@pytest.fixture(scope="module")
def open_pair(pki: DemoPKI) -> Iterator[KMEPairServer]:
    """A KME pair *without* SAE restrictions (any SAE the CA issued is served), 4000 keys in its pool."""
    store = KeyStore()
    store.add_material(bytes(range(256)) * 500)
    a = KMEListener(KMEEnd("kme-a"), 0, pki.cert("kme-a"), pki.key("kme-a"))
    b = KMEListener(KMEEnd("kme-b"), 0, pki.cert("kme-b"), pki.key("kme-b"))
    server = KMEPairServer(store, a=a, b=b, ca=pki.ca)
    server.start()
    yield server
    server.stop()


def _raw(server: KMEPairServer, pki: DemoPKI, sae: str, end: int) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.cert(sae)), str(pki.key(sae)))
    return httpx.Client(base_url=server.urls[end] + "/api/v1/keys", verify=ctx, timeout=10.0)


@pytest.fixture()
def sae_a(open_pair: KMEPairServer, pki: DemoPKI) -> Iterator[httpx.Client]:
    with _raw(open_pair, pki, "edge-1", 0) as http:
        yield http


@pytest.fixture()
def sae_b(open_pair: KMEPairServer, pki: DemoPKI) -> Iterator[httpx.Client]:
    with _raw(open_pair, pki, "server", 1) as http:
        yield http


def _assert_error(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) <= {"message", "details"}
    assert body["details"] == [{"reason": reason}]


# --- conformance: status, enc_keys, dec_keys ----------------------------------------------------------


def test_status_fields_and_types(sae_a: httpx.Client) -> None:
    # Execute
    response = sae_a.get("/server/status")
    # Assert
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == STATUS_FIELDS  # a pool filled by hand: no link figures, no status_extension
    assert all(isinstance(body[f], str) for f in ("source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID"))
    assert all(isinstance(body[f], int) for f in STATUS_FIELDS if f.endswith(("size", "count", "request")))
    assert body["min_key_size"] <= body["key_size"] <= body["max_key_size"]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_enc_keys_then_dec_keys_round_trip(sae_a: httpx.Client, sae_b: httpx.Client, method: str) -> None:
    # Execute: enc_keys by the master (GET query or POST body), dec_keys by the slave the same way
    if method == "GET":
        enc = sae_a.get("/server/enc_keys", params={"number": 2, "size": 512})
    else:
        enc = sae_a.post("/server/enc_keys", json={"number": 2, "size": 512})
    keys = enc.json()["keys"]
    if method == "GET":
        dec = [sae_b.get("/edge-1/dec_keys", params={"key_ID": k["key_ID"]}).json()["keys"][0] for k in keys]
    else:
        dec = sae_b.post("/edge-1/dec_keys", json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]}).json()["keys"]
    # Assert: key container {keys: [{key_ID, key}]}, UUID ids, base64 keys of the requested size
    assert enc.status_code == 200
    assert [set(k) for k in keys] == [{"key_ID", "key"}] * 2
    assert all(uuid.UUID(k["key_ID"]) and len(base64.b64decode(k["key"])) == 64 for k in keys)
    assert dec == keys


def test_enc_keys_defaults_are_one_key_of_the_default_size(sae_a: httpx.Client) -> None:
    # Execute
    keys = sae_a.get("/server/enc_keys").json()["keys"]
    # Assert
    assert len(keys) == 1 and len(base64.b64decode(keys[0]["key"])) * 8 == 256


def test_post_enc_keys_without_a_body_is_the_default_request(sae_a: httpx.Client) -> None:
    # Execute: defect 3 — no body at all, no content type, exactly as an outside suite sends it
    bare = sae_a.post("/server/enc_keys")
    empty = sae_a.post("/server/enc_keys", json={})
    # Assert: both are the default request
    assert bare.status_code == 200, bare.text
    assert empty.status_code == 200
    assert len(bare.json()["keys"]) == len(empty.json()["keys"]) == 1


def test_post_dec_keys_without_a_body_is_refused_like_an_empty_object(sae_b: httpx.Client) -> None:
    # Execute: key_IDs is mandatory in dec_keys (6.4), so no body is as bad as {}
    bare = sae_b.post("/edge-1/dec_keys")
    empty = sae_b.post("/edge-1/dec_keys", json={})
    # Assert
    _assert_error(bare, 400, "bad_request")
    assert "key_IDs" in bare.json()["message"]
    assert bare.json() == empty.json()


@pytest.mark.parametrize(
    ("path", "params", "reason"),
    [
        ("/server/enc_keys", {"size": 100}, "key_size"),
        ("/server/enc_keys", {"size": 4096}, "key_size"),
        ("/server/enc_keys", {"number": 0}, "key_number"),
        ("/server/enc_keys", {"number": 10_000}, "key_number"),
        ("/server/enc_keys", {"number": "many"}, "bad_request"),
    ],
)
def test_enc_keys_400_errors(sae_a: httpx.Client, path: str, params: dict[str, object], reason: str) -> None:
    _assert_error(sae_a.get(path, params=params), 400, reason)


def test_enc_keys_400_on_unsupported_request_fields(sae_a: httpx.Client) -> None:
    # Execute
    multicast = sae_a.post("/server/enc_keys", json={"additional_slave_SAE_IDs": ["edge-2"]})
    mandatory = sae_a.post("/server/enc_keys", json={"extension_mandatory": [{"abc_route_type": "direct"}]})
    optional = sae_a.post("/server/enc_keys", json={"extension_optional": [{"abc_route_type": "direct"}]})
    malformed = sae_a.post("/server/enc_keys", content=b"{nope", headers={"content-type": "application/json"})
    # Assert: optional extensions are ignored, mandatory ones refused
    _assert_error(multicast, 400, "bad_request")
    _assert_error(mandatory, 400, "unsupported_extension")
    assert optional.status_code == 200
    _assert_error(malformed, 400, "bad_request")


def test_dec_keys_400_errors(sae_a: httpx.Client, sae_b: httpx.Client) -> None:
    # Prepare
    (key,) = sae_a.get("/server/enc_keys").json()["keys"]
    # Execute
    unknown = sae_b.get("/edge-1/dec_keys", params={"key_ID": str(uuid.uuid4())})
    missing = sae_b.get("/edge-1/dec_keys")
    first = sae_b.get("/edge-1/dec_keys", params={"key_ID": key["key_ID"]})
    again = sae_b.get("/edge-1/dec_keys", params={"key_ID": key["key_ID"]})
    # Assert
    _assert_error(unknown, 400, "unknown_key_id")
    _assert_error(missing, 400, "bad_request")
    assert first.status_code == 200
    _assert_error(again, 400, "key_id_reused")


def test_401_without_a_client_certificate_or_for_another_pairs_key(
    open_pair: KMEPairServer, pki: DemoPKI, sae_a: httpx.Client
) -> None:
    # Prepare: a key edge-1 obtained for the server, claimed by edge-2 (it is no slave of that key)
    (key,) = sae_a.get("/server/enc_keys").json()["keys"]
    # Execute
    with _raw(open_pair, pki, "edge-2", 1) as other:
        stolen = other.get("/edge-1/dec_keys", params={"key_ID": key["key_ID"]})
    # Assert
    _assert_error(stolen, 401, "sae_not_authorised")


def test_503_when_the_kme_is_out_of_key(pki: DemoPKI) -> None:
    # Prepare: a pair with one 256-bit key
    store = KeyStore()
    store.add_material(bytes(32))
    a = KMEListener(KMEEnd("kme-a"), 0, pki.cert("kme-a"), pki.key("kme-a"))
    b = KMEListener(KMEEnd("kme-b"), 0, pki.cert("kme-b"), pki.key("kme-b"))
    with KMEPairServer(store, a=a, b=b, ca=pki.ca) as pair, _raw(pair, pki, "edge-1", 0) as http:
        # Execute
        ok = http.get("/server/enc_keys")
        empty = http.get("/server/enc_keys")
    # Assert
    assert ok.status_code == 200
    _assert_error(empty, 503, "out_of_key")


# --- defect 2: slave SAE ID blank or equal to the master --------------------------------------------------


@pytest.mark.parametrize("route", ["status", "enc_keys"])
@pytest.mark.parametrize("slave", ["%20", "%20%20", "%09", "server%20", "edge-1"])
def test_blank_padded_or_self_slave_sae_id_is_refused(sae_a: httpx.Client, route: str, slave: str) -> None:
    # Execute: the KME has no SAE restrictions, so only the ID check stands between us and a key
    response = sae_a.get(f"/{slave}/{route}")
    # Assert
    _assert_error(response, 400, "invalid_sae_id")
    message = response.json()["message"]
    assert "slave_SAE_ID" in message
    if slave == "edge-1":
        assert "master and slave must differ" in message


@pytest.mark.parametrize("master", ["%20", "server"])
def test_blank_or_self_master_sae_id_in_dec_keys_is_refused(sae_b: httpx.Client, master: str) -> None:
    response = sae_b.post(f"/{master}/dec_keys", json={"key_IDs": [{"key_ID": str(uuid.uuid4())}]})
    _assert_error(response, 400, "invalid_sae_id")
    assert "master_SAE_ID" in response.json()["message"]


def test_client_maps_the_invalid_sae_id_reason(open_pair: KMEPairServer, pki: DemoPKI) -> None:
    with KMEClient(open_pair.urls[0], cert=pki.cert("edge-1"), key=pki.key("edge-1"), ca=pki.ca) as edge:
        with pytest.raises(QKDError) as info:
            edge.enc_keys(" ")
    assert info.value.reason == "invalid_sae_id"


# --- defect 1: dec_keys answers in another order, and never losing released keys -----------------------------


def _key(key_id: str, fill: int, size: int = 32) -> dict[str, str]:
    return {"key_ID": key_id, "key": base64.b64encode(bytes([fill]) * size).decode()}


def _mock(pki: DemoPKI, answers: list[dict[str, object]], seen: list[dict[str, object]]) -> KMEClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=answers.pop(0))

    return KMEClient(
        "https://kme.test", cert=pki.cert("server"), key=pki.key("server"), ca=pki.ca,
        transport=httpx.MockTransport(handler),
    )  # fmt: skip


def test_dec_keys_answer_in_another_order_is_matched_by_key_id(pki: DemoPKI) -> None:
    # Prepare: asked [c, b, a], the KME answers [a, b, c]
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    seen: list[dict[str, object]] = []
    kme = _mock(pki, [{"keys": [_key(a, 1), _key(b, 2), _key(c, 3)]}], seen)
    # Execute
    with kme:
        keys = kme.dec_keys("edge-1", [c, b, a], size=256)
    # Assert: in the order asked, each with its own material
    assert [k.key_id for k in keys] == [c, b, a]
    assert [k.key[0] for k in keys] == [3, 2, 1]
    assert kme.held_key_ids() == []


def test_refused_dec_keys_answer_keeps_the_delivered_keys(pki: DemoPKI) -> None:
    # Prepare: asked [a, b], the KME (which now counts both as delivered) answers only [b]
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    seen: list[dict[str, object]] = []
    kme = _mock(pki, [{"keys": [_key(b, 7)]}, {"keys": [_key(a, 9)]}], seen)
    with kme:
        # Execute: the first call is refused, but b is held, not lost
        with pytest.raises(QKDError) as info:
            kme.dec_keys("edge-1", [a, b])
        held = kme.held_key_ids()
        (only_b,) = kme.dec_keys("edge-1", [b])
        (only_a,) = kme.dec_keys("edge-1", [a])
    # Assert: b served from the hold without asking the KME again; a fetched normally
    assert info.value.reason == "kme_malformed" and "held" in info.value.message
    assert held == [("edge-1", b)]
    assert only_b.key == bytes([7]) * 32 and only_a.key == bytes([9]) * 32
    assert seen == [{"key_IDs": [{"key_ID": a}, {"key_ID": b}]}, {"key_IDs": [{"key_ID": a}]}]
    assert kme.held_key_ids() == []


def test_wrong_size_key_is_refused_but_held(pki: DemoPKI) -> None:
    # Prepare
    a = str(uuid.uuid4())
    kme = _mock(pki, [{"keys": [_key(a, 5, size=16)]}], [])
    with kme:
        # Execute
        with pytest.raises(QKDError) as info:
            kme.dec_keys("edge-1", [a], size=256)
        (kept,) = kme.dec_keys("edge-1", [a])  # size unchecked: the caller decides
    # Assert
    assert info.value.reason == "key_size" and "held" in info.value.message
    assert kept.key == bytes([5]) * 16


def test_one_unparseable_key_does_not_lose_the_good_ones(pki: DemoPKI) -> None:
    # Prepare
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    bad = {"key_ID": b, "key": "***"}
    kme = _mock(pki, [{"keys": [_key(a, 4), bad]}], [])
    with kme:
        # Execute
        with pytest.raises(QKDError) as info:
            kme.dec_keys("edge-1", [a, b])
        (kept,) = kme.dec_keys("edge-1", [a])
    # Assert
    assert info.value.reason == "kme_malformed"
    assert kept.key == bytes([4]) * 32
