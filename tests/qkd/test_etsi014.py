"""The ETSI GS QKD 014 API over mutual TLS on 127.0.0.1, and the client's handling of bad KMEs."""

from __future__ import annotations

import base64
import json
import socket
import uuid
from collections.abc import Callable

import httpx
import pytest

from qflare.errors import QKDError
from qflare.kme import KMEPairServer
from qflare.qkd.client import KMEClient
from qflare.qkd.keystore import KeyStore, KeyStoreLimits
from qflare.qkd.pki import DemoPKI
from tests.qkd.conftest import client, start_pair

STATUS_FIELDS = {
    "source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID", "key_size", "stored_key_count",
    "max_key_count", "max_key_per_request", "max_key_size", "min_key_size", "max_SAE_ID_count",
}  # fmt: skip


def _raw(kme_pair: KMEPairServer, pki: DemoPKI, sae: str, end: int = 0) -> httpx.Client:
    """A plain httpx client with an SAE certificate, to look at the wire format itself."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.cert(sae)), str(pki.key(sae)))
    return httpx.Client(base_url=kme_pair.urls[end] + "/api/v1/keys", verify=ctx)


def test_status_has_exactly_the_standard_fields(kme_pair: KMEPairServer, pki: DemoPKI) -> None:
    # Execute
    with _raw(kme_pair, pki, "edge-1") as http:
        body = http.get("/server/status").json()
    # Assert: the SAE identity comes from the client certificate; status_extension (optional in 6.1) holds
    # the BB84 link's figures, since this pool is fed by the link.
    assert set(body) == STATUS_FIELDS | {"status_extension"}
    assert (body["source_KME_ID"], body["target_KME_ID"]) == ("kme-a", "kme-b")
    assert (body["master_SAE_ID"], body["slave_SAE_ID"]) == ("edge-1", "server")
    assert body["key_size"] == 256 and body["stored_key_count"] > 0
    link = body["status_extension"]["qflare_link"]
    assert link["frames"] >= 1 and link["aborted_frames"] == 0 and link["last_abort_reason"] is None
    assert 0.0 <= link["qber"] < link["qber_abort"] == 0.11 and link["key_bits_per_pulse"] > 0


def test_the_slave_reads_the_link_status_through_the_client(kme_pair: KMEPairServer, pki: DemoPKI) -> None:
    # The server (KME B's SAE) asks about its link to a device: what the operator's dashboard shows.
    with client(kme_pair.urls[1], pki, "server") as sae:
        status = sae.status("edge-1")
    assert status.status_extension is not None and status.status_extension["qflare_link"]["frames"] >= 1


def test_master_and_slave_get_the_same_keys_once(master: KMEClient, slave: KMEClient) -> None:
    # Execute
    keys = master.enc_keys("server", number=3, size=256)
    fetched = slave.dec_keys("edge-1", [k.key_id for k in keys], size=256)
    # Assert
    assert fetched == keys
    assert all(uuid.UUID(k.key_id).version == 4 and len(k.key) == 32 for k in keys)
    with pytest.raises(QKDError) as info:
        slave.dec_keys("edge-1", [keys[1].key_id])
    assert info.value.reason == "key_id_reused"


def test_get_forms_of_enc_and_dec_keys(kme_pair: KMEPairServer, pki: DemoPKI) -> None:
    # Execute
    with _raw(kme_pair, pki, "edge-1", 0) as a, _raw(kme_pair, pki, "server", 1) as b:
        enc = a.get("/server/enc_keys", params={"number": 2, "size": 128}).json()
        first = enc["keys"][0]
        dec = b.get("/edge-1/dec_keys", params={"key_ID": first["key_ID"]}).json()
    # Assert: {keys: [{key_ID, key}]} with base64 keys
    assert [set(k) for k in enc["keys"]] == [{"key_ID", "key"}] * 2
    assert len(base64.b64decode(first["key"])) == 16
    assert dec == {"keys": [first]}


def test_unknown_key_id_is_refused(slave: KMEClient) -> None:
    with pytest.raises(QKDError) as info:
        slave.dec_keys("edge-1", [str(uuid.uuid4())])
    assert info.value.reason == "unknown_key_id"


@pytest.mark.parametrize("size", [100, 8, 4096])
def test_wrong_key_size_is_refused(master: KMEClient, size: int) -> None:
    with pytest.raises(QKDError) as info:
        master.enc_keys("server", size=size)
    assert info.value.reason == "key_size"


def test_errors_use_the_standard_error_body(kme_pair: KMEPairServer, pki: DemoPKI) -> None:
    # Execute
    with _raw(kme_pair, pki, "server", 1) as http:
        unknown = http.post("/edge-1/dec_keys", json={"key_IDs": [{"key_ID": str(uuid.uuid4())}]})
        malformed = http.post("/edge-1/dec_keys", content=b"{not json", headers={"content-type": "application/json"})
    # Assert: 400 with {message, details}
    for response in (unknown, malformed):
        assert response.status_code == 400
        assert set(response.json()) == {"message", "details"}
    assert unknown.json()["details"] == [{"reason": "unknown_key_id"}]


def test_sae_not_attached_to_this_kme_is_unauthorised(kme_pair: KMEPairServer, pki: DemoPKI) -> None:
    # Prepare: a valid certificate of the right CA, for an SAE the KME does not serve
    with client(kme_pair.urls[0], pki, "intruder") as intruder:
        # Execute / Assert
        with pytest.raises(QKDError) as info:
            intruder.enc_keys("server")
    assert info.value.reason == "sae_not_authorised"


def test_slave_cannot_take_a_key_meant_for_another_slave(
    kme_pair: KMEPairServer, pki: DemoPKI, master: KMEClient, slave: KMEClient
) -> None:
    # Prepare: edge-2's key for the server, claimed as edge-1's
    with client(kme_pair.urls[0], pki, "edge-2") as edge2:
        (key,) = edge2.enc_keys("server")
    # Execute / Assert
    with pytest.raises(QKDError) as info:
        slave.dec_keys("edge-1", [key.key_id])
    assert info.value.reason == "sae_not_authorised"
    assert slave.dec_keys("edge-2", [key.key_id]) == [key]


def test_client_certificate_from_another_ca_is_rejected(
    kme_pair: KMEPairServer, pki: DemoPKI, rogue_pki: DemoPKI
) -> None:
    # Prepare: rogue client certificate, but the right CA pinned for the KME
    rogue = KMEClient(kme_pair.urls[0], cert=rogue_pki.cert("edge-1"), key=rogue_pki.key("edge-1"), ca=pki.ca)
    # Execute / Assert
    with rogue, pytest.raises(QKDError) as info:
        rogue.enc_keys("server")
    assert info.value.reason == "kme_certificate"


def test_kme_certificate_not_from_the_pinned_ca_is_rejected(pki: DemoPKI, rogue_pki: DemoPKI) -> None:
    # Prepare: a KME presenting a certificate from another CA
    store = KeyStore()
    store.add_material(bytes(1024))
    impostor = start_pair(store, rogue_pki)
    try:
        with client(impostor.urls[0], pki, "edge-1") as edge:
            # Execute / Assert
            with pytest.raises(QKDError) as info:
                edge.enc_keys("server")
        assert info.value.reason == "kme_certificate"
        assert store.status().issued_pending == 0
    finally:
        impostor.stop()


def test_kme_out_of_key_is_a_clear_error(pki: DemoPKI) -> None:
    # Prepare: a pair with 2 keys in its pool
    store = KeyStore(KeyStoreLimits())
    store.add_material(bytes(64))
    pair = start_pair(store, pki)
    try:
        with client(pair.urls[0], pki, "edge-1") as edge:
            edge.enc_keys("server", number=2)
            # Execute / Assert
            with pytest.raises(QKDError) as info:
                edge.enc_keys("server")
        assert info.value.reason == "out_of_key"
        assert "0 key bits" in info.value.message
    finally:
        pair.stop()


def test_unreachable_kme(pki: DemoPKI) -> None:
    # Prepare: a port with nothing listening
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Execute / Assert
    with client(f"https://127.0.0.1:{port}", pki, "edge-1") as edge, pytest.raises(QKDError) as info:
        edge.enc_keys("server")
    assert info.value.reason == "kme_unreachable"


# --- malformed KME answers (client side, httpx.MockTransport) -----------------------------------


def _mock(pki: DemoPKI, handler: Callable[[httpx.Request], httpx.Response]) -> KMEClient:
    return KMEClient(
        "https://kme.test",
        cert=pki.cert("edge-1"),
        key=pki.key("edge-1"),
        ca=pki.ca,
        transport=httpx.MockTransport(handler),
    )


def _key(key_id: str | None = None, key: bytes = bytes(32)) -> dict[str, str]:
    return {"key_ID": key_id or str(uuid.uuid4()), "key": base64.b64encode(key).decode()}


@pytest.mark.parametrize(
    "body",
    [
        b"<html>not json</html>",
        b"[]",
        json.dumps({"keys": "nope"}).encode(),
        json.dumps({"keys": [{"key_ID": str(uuid.uuid4())}]}).encode(),
        json.dumps({"keys": [{"key_ID": str(uuid.uuid4()), "key": "***not base64***"}]}).encode(),
        json.dumps({"keys": [{"key_ID": "not-a-uuid", "key": base64.b64encode(bytes(32)).decode()}]}).encode(),
        json.dumps({"keys": [{"key_ID": str(uuid.uuid4()), "key": 12345}]}).encode(),
        json.dumps({"keys": [_key(), _key()]}).encode(),  # two keys for one requested
        json.dumps({"keys": []}).encode(),
    ],
)
def test_malformed_key_container_is_refused(pki: DemoPKI, body: bytes) -> None:
    # Prepare
    with _mock(pki, lambda _: httpx.Response(200, content=body)) as kme:
        # Execute / Assert
        with pytest.raises(QKDError) as info:
            kme.enc_keys("server", size=256)
    assert info.value.reason == "kme_malformed"


def test_key_of_wrong_size_from_the_kme_is_refused(pki: DemoPKI) -> None:
    with _mock(pki, lambda _: httpx.Response(200, json={"keys": [_key(key=bytes(16))]})) as kme:
        with pytest.raises(QKDError) as info:
            kme.enc_keys("server", size=256)
    assert info.value.reason == "key_size"


def test_dec_keys_answer_for_other_ids_is_refused(pki: DemoPKI) -> None:
    with _mock(pki, lambda _: httpx.Response(200, json={"keys": [_key()]})) as kme:
        with pytest.raises(QKDError) as info:
            kme.dec_keys("edge-1", [str(uuid.uuid4())])
    assert info.value.reason == "kme_malformed"


def test_malformed_status_is_refused(pki: DemoPKI) -> None:
    with _mock(pki, lambda _: httpx.Response(200, json={"source_KME_ID": "a", "key_size": "256"})) as kme:
        with pytest.raises(QKDError) as info:
            kme.status("server")
    assert info.value.reason == "kme_malformed"


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (503, b"gateway down", "kme_unavailable"),
        (401, json.dumps({"message": "who?", "details": []}).encode(), "kme_unauthorized"),
        (400, json.dumps({"message": "x", "details": [{"reason": "made_up"}]}).encode(), "kme_bad_request"),
        (503, json.dumps({"message": "empty", "details": [{"reason": "out_of_key"}]}).encode(), "out_of_key"),
        (500, b"", "kme_error"),
    ],
)
def test_error_answers_map_to_reasons(pki: DemoPKI, status: int, body: bytes, reason: str) -> None:
    with _mock(pki, lambda _: httpx.Response(status, content=body)) as kme:
        with pytest.raises(QKDError) as info:
            kme.enc_keys("server")
    assert info.value.reason == reason


def test_client_sends_the_standard_request_bodies(pki: DemoPKI) -> None:
    # Prepare
    seen: list[httpx.Request] = []
    ids = [str(uuid.uuid4())]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"keys": [_key(ids[0])]})

    # Execute
    with _mock(pki, handler) as kme:
        kme.enc_keys("server", number=1, size=256)
        kme.dec_keys("edge-1", ids)
    # Assert
    assert seen[0].method == "POST" and seen[0].url.path == "/api/v1/keys/server/enc_keys"
    assert json.loads(seen[0].content) == {"number": 1, "size": 256}
    assert seen[1].url.path == "/api/v1/keys/edge-1/dec_keys"
    assert json.loads(seen[1].content) == {"key_IDs": [{"key_ID": ids[0]}]}


def test_missing_tls_material_is_a_clear_error(pki: DemoPKI, tmp_path: object) -> None:
    with pytest.raises(QKDError) as info:
        KMEClient("https://127.0.0.1:1", cert="/nonexistent.pem", key="/nonexistent.key", ca=pki.ca)
    assert info.value.reason == "kme_certificate"
