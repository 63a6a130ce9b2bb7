"""The call table is the whole interface: anything not in it, or not of the declared types, is refused
before enclave code runs; bulk data only moves through bounds-checked regions."""

from __future__ import annotations

import json

import pytest

from qflare.enclave import ecalls as ec
from qflare.enclave.channel import SharedRegion, read_frame, write_frame
from qflare.errors import EnclaveError, NotFound, PayloadTooLarge, UpdateRejected
from qflare.fl.spec import ModelSpec

from .conftest import EnclaveFactory


def refused(frame: bytes) -> str:
    with pytest.raises(EnclaveError) as err:
        ec.decode_call(frame)
    assert err.value.reason == "ecall_refused"
    return err.value.message


def test_calls_round_trip_through_their_encoding() -> None:
    # Prepare
    call = ec.ValidateUpdate(round_id=7, data=ec.Region(0, 10), kind="envelope", allowed_key_sources=("mlkem",),
                             extra_secret=b"\x00\x01", time_ms=1767139200000)  # fmt: skip

    # Execute / Assert
    assert ec.decode_call(ec.encode_call(call)) == call


@pytest.mark.parametrize(
    "doc",
    [
        {"call": "read_private_key", "args": {}},
        {"call": "get_quote", "args": {}},
        {"call": "get_quote", "args": {"nonce": "AAAA", "extra": 1}},
        {"call": "accumulate", "args": {"round_id": True, "update_id": "x"}},
        {"call": "accumulate", "args": {"round_id": "3", "update_id": "x"}},
        {"call": "get_quote", "args": {"nonce": "not base64!"}},
        {"call": "replay", "args": {"round_id": 1, "sealed": [0]}},
        {"call": "replay", "args": {"round_id": 1, "sealed": [-1, 5]}},
        {"call": "get_identity", "args": {}, "more": 1},
    ],
)
def test_unknown_calls_and_mistyped_arguments_are_refused(doc: dict[str, object]) -> None:
    refused(json.dumps(doc).encode())


def test_non_json_frames_are_refused() -> None:
    refused(b"\x80\x81 not json")


def test_refusals_come_back_as_the_same_error_class() -> None:
    # Prepare
    frame = ec.encode_error(UpdateRejected("too big", reason="norm_exceeded"))

    # Execute / Assert
    with pytest.raises(UpdateRejected) as err:
        ec.decode_result(ec.Empty, frame)
    assert err.value.reason == "norm_exceeded"


def test_an_unknown_error_class_becomes_an_internal_enclave_error() -> None:
    # Prepare
    frame = json.dumps({"error": {"type": "SystemExit", "reason": "x", "message": "m"}}).encode()

    # Execute / Assert
    with pytest.raises(EnclaveError) as err:
        ec.decode_result(ec.Empty, frame)
    assert err.value.reason == "enclave_internal_error"


def test_regions_are_bounded_to_their_half() -> None:
    # Prepare
    region, fd = SharedRegion.create_memfd(4096)
    try:
        # Execute / Assert
        assert region.take(region.put(b"abc", side="input"), side="input") == b"abc"
        for bad in (ec.Region(2000, 100), ec.Region(2048, 1)):
            with pytest.raises(EnclaveError):
                region.take(bad, side="input")
        with pytest.raises(EnclaveError):
            region.take(ec.Region(0, 10), side="output")
        with pytest.raises(PayloadTooLarge):
            region.put(b"x" * 2049, side="input")
    finally:
        region.close()


def test_the_live_enclave_refuses_calls_outside_the_table_and_keeps_serving(start_enclave: EnclaveFactory) -> None:
    # Prepare: talk to the process directly, as a compromised host could
    enclave = start_enclave()
    running = enclave._running  # noqa: SLF001 - the raw channel is the point of this test
    assert running is not None

    # Execute
    write_frame(running.write_fd, json.dumps({"call": "dump_keys", "args": {}}).encode())
    unknown = read_frame(running.read_fd, timeout=10)
    write_frame(running.write_fd, ec.encode_call(ec.Accumulate(round_id=1, update_id="00")))
    not_found = read_frame(running.read_fd, timeout=10)
    write_frame(running.write_fd, ec.encode_call(ec.UnsafeDebugKeyDigest()))
    not_debug = read_frame(running.read_fd, timeout=10)

    # Assert
    with pytest.raises(EnclaveError) as err:
        ec.decode_result(ec.Empty, unknown)
    assert err.value.reason == "ecall_refused"
    with pytest.raises(NotFound):
        ec.decode_result(ec.AccumulatedResult, not_found)
    with pytest.raises(EnclaveError) as debug_err:
        ec.decode_result(ec.DigestResult, not_debug)
    assert debug_err.value.reason == "not_a_debug_enclave"
    assert enclave.identity().measurement  # still serving


def test_the_enclave_refuses_a_region_outside_the_input_half(
    start_enclave: EnclaveFactory, spec: ModelSpec, base_model: bytes
) -> None:
    # Prepare: an open round, then a replay whose region points into the enclave's output half
    enclave = start_enclave()
    enclave.begin_round(1, base_model, spec)
    running = enclave._running  # noqa: SLF001
    assert running is not None
    outside = ec.Region(offset=running.region.half, length=16)

    # Execute
    write_frame(running.write_fd, ec.encode_call(ec.Replay(round_id=1, sealed=outside)))
    answer = read_frame(running.read_fd, timeout=10)

    # Assert
    with pytest.raises(EnclaveError) as err:
        ec.decode_result(ec.AccumulatedResult, answer)
    assert err.value.reason == "ecall_refused"
    assert "outside" in err.value.message
