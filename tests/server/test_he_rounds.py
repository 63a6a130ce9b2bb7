"""CKKS on the deployed path (aggregation.he.scheme ckks): ciphertexts in the envelopes, summed blind by the server.

Each refusal is checked to leave the server's state unchanged (``Harness.snapshot``).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from qflare.config import GlobalConfig
from qflare.errors import ConfigError
from qflare.fl.aggregate import fedavg
from qflare.fl.he import (
    decrypt_aggregate,
    encrypt_update,
    is_ckks_blob,
    load_secret_context,
    make_context,
    write_context_files,
)
from qflare.fl.serialize import dump_arrays
from qflare.server.app import build_state, create_app
from qflare.server.he_aggregation import HEAggregator
from tests.server.conftest import _KEYS, ADMIN, FakeClock, Harness, config_for, enroll

DEVICES = ("edge_0", "edge_1", "edge_2")


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The operator's two files (qflare he init): the secret one (devices), the public one (server)."""
    d = tmp_path_factory.mktemp("he")
    write_context_files(make_context(), d / "secret.ctx", d / "public.ctx")
    return d / "secret.ctx", d / "public.ctx"


@pytest.fixture(scope="module")
def device_ctx(contexts: tuple[Path, Path]) -> Any:
    return load_secret_context(contexts[0])


def he_config(tmp_path: Path, public: Path, **rounds: object) -> GlobalConfig:
    doc = config_for(tmp_path, **rounds).model_dump(mode="json")
    doc["server"]["max_update_bytes"] = 16 * 1024 * 1024  # the default (the test config has 256 KiB)
    doc["aggregation"]["he"] = {"scheme": "ckks", "public_context_file": str(public)}
    doc["evaluation"]["enabled"] = False
    return GlobalConfig.model_validate(doc)  # every validator runs, as when the server loads its file


def he_harness(tmp_path: Path, public: Path, *, enroll_devices: bool = True, **rounds: object) -> Iterator[Harness]:
    clock = FakeClock()
    state = build_state(he_config(tmp_path, public, **rounds), admin_token=ADMIN, clock=clock)
    keys = {d: _KEYS[i] for i, d in enumerate(DEVICES)}
    with TestClient(create_app(state, run_ticker=False)) as client:
        for device_id, key in keys.items() if enroll_devices else ():
            enroll(client, device_id, key)
        yield Harness(client=client, state=state, clock=clock, keys=keys)
    state.close()


def _updates(h: Harness) -> list[tuple[dict[str, np.ndarray], int]]:
    base = h.global_arrays()
    return [({k: v * s for k, v in base.items()}, n) for s, n in ((0.5, 10), (1.5, 30), (-1.0, 7))]


def test_a_ckks_round_sums_ciphertexts_and_devices_decrypt_fedavg(tmp_path: Path, contexts: tuple[Path, Path],
                                                                   device_ctx: Any) -> None:
    for h in he_harness(tmp_path, contexts[1]):
        # Prepare
        assert isinstance(h.state.orchestrator.backend, HEAggregator)
        spec = h.state.orchestrator.spec
        rid = h.open_round()
        updates = _updates(h)
        # Execute: each device uploads num_examples x update, encrypted, inside its envelope
        for device, (arrays, n) in zip(DEVICES, updates, strict=True):
            r = h.post(device, f"/v1/device/rounds/{rid}/update",
                       encrypt_update(device_ctx, arrays, n, spec, round_id=rid, train_loss=0.25))
            assert r.status_code == 200, r.text
            assert r.json()["num_examples"] == n
        # Assert: the published model is the encrypted sum; a device decrypts it to FedAvg
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and rnd.status == "aggregated"
        blob = h.state.repo.model_blob(rnd.new_version)  # type: ignore[arg-type]
        assert is_ckks_blob(blob)
        out = decrypt_aggregate(device_ctx, blob, spec)
        expected = fedavg(updates)
        for name in expected:
            np.testing.assert_allclose(out[name], expected[name], atol=1e-4)
        # the round's metrics: counts, loss, the server's CKKS figures; no accuracy (the server cannot evaluate)
        m = rnd.metrics
        assert m["total_examples"] == 47 and math.isclose(m["train_loss"], 0.25)
        assert m["he"]["scheme"] == "ckks" and m["he"]["aggregate_bytes"] == len(blob)
        assert m["he"]["ciphertext_bytes_in"] > 3 * 3_000_000 and m["update_seconds"] > 0
        assert "accuracy" not in m
        # the device's next task downloads the encrypted aggregate, sealed, as any model
        task = h.post(DEVICES[0], "/v1/device/task")
        assert task.status_code == 200
        model = h.post(DEVICES[0], f"/v1/device/model/{rnd.new_version}")
        assert model.status_code == 200 and model.content == blob


def _head_end(blob: bytes) -> int:
    """Where a CKKS blob's header ends: magic (5 bytes), u32 length, JSON (fl/he.py ``_pack``)."""
    (n,) = struct.unpack_from(">I", blob, 5)
    return 9 + int(n)


def _refused(h: Harness, device: str, rid: int, payload: bytes, status: int, reason: str) -> None:
    before = h.snapshot()
    r = h.post(device, f"/v1/device/rounds/{rid}/update", payload)
    assert (r.status_code, json.loads(r.raw)["error"]["reason"]) == (status, reason), r.text
    assert h.snapshot() == before
    assert not h.state.repo.has_update(rid, device)


def test_bad_ckks_updates_are_refused_with_a_reason_and_change_nothing(tmp_path: Path, contexts: tuple[Path, Path],
                                                                       device_ctx: Any) -> None:
    import tenseal as ts

    for h in he_harness(tmp_path, contexts[1]):
        spec = h.state.orchestrator.spec
        rid = h.open_round()
        arrays, n = _updates(h)[0]
        good = encrypt_update(device_ctx, arrays, n, spec, round_id=rid)
        # another context of the same parameters (another operator's key)
        other = encrypt_update(make_context(), arrays, n, spec, round_id=rid)
        _refused(h, "edge_0", rid, other, 422, "he_context_mismatch")
        # other parameters (N=16384, other moduli)
        ctx16 = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=16384, coeff_mod_bit_sizes=[60, 40, 40, 40, 60])
        ctx16.global_scale = 2**40
        _refused(h, "edge_0", rid, encrypt_update(ctx16, arrays, n, spec, round_id=rid), 422, "he_context_mismatch")
        # a blob of this context made for another round (replayed from round rid - 1 or sent ahead)
        _refused(h, "edge_0", rid, encrypt_update(device_ctx, arrays, n, spec, round_id=rid + 1), 422,
                 "he_round_mismatch")
        # ciphertexts swapped after the header was written (the hash the header binds no longer matches)
        swapped = encrypt_update(device_ctx, {k: -v for k, v in arrays.items()}, n, spec, round_id=rid)
        _refused(h, "edge_0", rid, good[: _head_end(good)] + swapped[_head_end(swapped):], 422, "he_hash_mismatch")
        # a truncated blob, garbage, and a plaintext safetensors update (never accepted by a CKKS server)
        _refused(h, "edge_0", rid, good[: len(good) // 2], 400, "he_malformed")
        _refused(h, "edge_0", rid, b"QFHE1" + b"\xff" * 64, 400, "he_malformed")
        _refused(h, "edge_0", rid, dump_arrays(arrays, {"num_examples": str(n)}), 422, "he_required")
        # a count of zero or above the bound
        _refused(h, "edge_0", rid, encrypt_update(device_ctx, arrays, 0, spec, round_id=rid), 422,
                 "he_count_mismatch")
        # Assert: the good update of the same device is still accepted afterwards
        assert h.post("edge_0", f"/v1/device/rounds/{rid}/update", good).status_code == 200


def test_a_restarted_server_replays_the_stored_ciphertexts(tmp_path: Path, contexts: tuple[Path, Path],
                                                           device_ctx: Any) -> None:
    for h in he_harness(tmp_path, contexts[1]):
        spec = h.state.orchestrator.spec
        rid = h.open_round()
        updates = _updates(h)
        for device, (arrays, n) in zip(DEVICES[:2], updates[:2], strict=True):
            assert h.post(device, f"/v1/device/rounds/{rid}/update",
                          encrypt_update(device_ctx, arrays, n, spec, round_id=rid)).status_code == 200
    # Execute: a new server on the same database and context resumes the round, then gets the last update
    for h in he_harness(tmp_path, contexts[1], enroll_devices=False):
        assert h.state.orchestrator._counts.get(rid) == 2
        arrays, n = updates[2]
        assert h.post(DEVICES[2], f"/v1/device/rounds/{rid}/update",
                      encrypt_update(device_ctx, arrays, n, spec, round_id=rid)).status_code == 200
        rnd = h.state.repo.get_round(rid)
        assert rnd is not None and rnd.status == "aggregated"
        out = decrypt_aggregate(device_ctx, h.state.repo.model_blob(rnd.new_version), spec)  # type: ignore[arg-type]
        expected = fedavg(updates)
        for name in expected:
            np.testing.assert_allclose(out[name], expected[name], atol=1e-4)


def test_a_server_config_holding_the_secret_key_is_refused_at_start(tmp_path: Path,
                                                                    contexts: tuple[Path, Path]) -> None:
    secret, _ = contexts
    # the devices' file (as qflare he init writes it) and a bare TenSEAL context with its secret key
    bare = tmp_path / "bare-secret.ctx"
    bare.write_bytes(bytes(make_context().serialize(save_secret_key=True)))
    for path in (secret, bare):
        (tmp_path / f"server-{path.name}").mkdir()
        with pytest.raises(ConfigError) as err:
            build_state(he_config(tmp_path / f"server-{path.name}", path), admin_token=ADMIN, clock=FakeClock())
        assert err.value.reason == "he_secret_key_on_server"
        assert "must never hold" in err.value.message


def test_ckks_config_refuses_what_cannot_run_on_ciphertexts(tmp_path: Path, contexts: tuple[Path, Path]) -> None:
    doc = he_config(tmp_path, contexts[1]).model_dump(mode="json")
    cases = [
        ({"aggregation": {**doc["aggregation"], "rule": "median"}}, "not with rule median"),
        ({"aggregation": {**doc["aggregation"], "max_update_norm": 5.0}}, "max_update_norm"),
        ({"evaluation": {**doc["evaluation"], "enabled": True}}, "cannot evaluate an encrypted model"),
        ({"enclave": {**doc["enclave"], "backend": "simulated"}}, "set enclave.backend: none"),
        ({"aggregation": {**doc["aggregation"], "he": {"scheme": "ckks"}}}, "needs public_context_file"),
        ({"rounds": {**doc["rounds"], "mode": "async", "buffer": 1}}, "synchronous rounds only"),
    ]
    for change, words in cases:
        with pytest.raises(ValueError, match=words):
            GlobalConfig.model_validate({**doc, **change})
