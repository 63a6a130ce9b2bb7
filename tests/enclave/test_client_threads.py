"""One :class:`~qflare.enclave.client.Enclave` called from several threads (a server's thread pool): each
call's answer is the caller's own. Every answer is written to the same half of the shared region, so the
client must copy it out before another call can write over it, i.e. under the call's lock."""

from __future__ import annotations

import threading
import time

from qflare.crypto.envelope import seal_request
from qflare.crypto.signing import SigningKey
from qflare.enclave.client import Enclave

from .conftest import EnclaveFactory


def _task_request(device_key: SigningKey, enclave: Enclave, device_id: str, payload: bytes) -> bytes:
    kem = enclave.public_keys().kem
    envelope, _opener = seal_request(device_key, kem, device_id=device_id, method="POST", path="/v1/device/task",
                                     round_id=None, payload=payload, now=time.time())  # fmt: skip
    return envelope


def test_an_answer_is_copied_out_before_another_threads_call_writes_over_it(
    start_enclave: EnclaveFactory, device_key: SigningKey, monkeypatch
) -> None:
    # Prepare: between the enclave's answer to A and A's copy of it, B makes a whole call (if it can).
    enclave = start_enclave()
    a = _task_request(device_key, enclave, "dev-a", b'{"want":"task","who":"a"}')
    b = _task_request(device_key, enclave, "dev-b", b'{"who":"b","want":"something else, and longer"}')
    original = Enclave._output
    other: dict[str, object] = {}
    interleave = {"armed": True}

    def output_after_another_call(running, region):  # type: ignore[no-untyped-def]
        if interleave.pop("armed", False):
            t = threading.Thread(target=lambda: other.setdefault("b", enclave.open_request(
                b, allowed_key_sources={"mlkem"})))  # fmt: skip
            t.start()
            t.join(timeout=3.0)  # B finishes unless A still holds the call's lock
            other["thread"] = t
        return original(running, region)

    monkeypatch.setattr(Enclave, "_output", staticmethod(output_after_another_call))

    # Execute
    opened_a = enclave.open_request(a, allowed_key_sources={"mlkem"})
    thread = other["thread"]
    assert isinstance(thread, threading.Thread)
    thread.join(timeout=60.0)

    # Assert: each caller got its own payload
    assert opened_a.device_id == "dev-a"
    assert opened_a.payload == b'{"want":"task","who":"a"}'
    opened_b = other["b"]
    assert opened_b.device_id == "dev-b"  # type: ignore[attr-defined]
    assert opened_b.payload == b'{"who":"b","want":"something else, and longer"}'  # type: ignore[attr-defined]


def test_concurrent_calls_from_many_threads_each_get_their_own_answer(
    start_enclave: EnclaveFactory, device_key: SigningKey
) -> None:
    # Prepare
    enclave = start_enclave()
    requests = {f"dev-{i}": _task_request(device_key, enclave, f"dev-{i}", f'{{"n":{i},"pad":"{"x" * i}"}}'.encode())
                for i in range(24)}  # fmt: skip
    got: dict[str, tuple[str, bytes]] = {}
    errors: list[BaseException] = []

    def call(device: str) -> None:
        try:
            for _ in range(5):
                opened = enclave.open_request(requests[device], allowed_key_sources={"mlkem"})
                sealed = enclave.seal_response(opened.request_hash, opened.payload)
                got[device] = (opened.device_id, opened.payload)
                assert isinstance(sealed, bytes) and len(sealed) > len(opened.payload)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # Execute
    threads = [threading.Thread(target=call, args=(d,)) for d in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120.0)

    # Assert
    assert not errors, errors[:3]
    for i in range(24):
        assert got[f"dev-{i}"] == (f"dev-{i}", f'{{"n":{i},"pad":"{"x" * i}"}}'.encode())
