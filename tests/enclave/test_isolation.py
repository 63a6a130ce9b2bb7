"""The server process never holds an enclave private key or a plaintext update.

A device process seals updates for the enclave; this (server) process runs a whole round through
``EnclaveAggregator`` and then looks for the enclave's private key seeds and for pieces of the
plaintext updates in everything it can reach: every object ``gc`` tracks and what they reference
(bytes, bytearrays, memoryviews, numpy arrays, mmaps), the backend's object graph, and, on Linux, every
live byte of its writable memory through ``/proc/self/mem`` (heap, stacks, the shared region, buffers
held by C extensions that no Python object exposes). Freed memory may already be reused or unmapped,
so the memory scan finds what is held, not everything that ever passed through. Each search is shown
to find a planted copy, so a clean result means something.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import mmap
import os
import subprocess
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from qflare.crypto.envelope import parse_envelope, verify_envelope_signature
from qflare.crypto.signing import VerifyKey
from qflare.enclave.backend import EnclaveAggregator
from qflare.enclave.config import EnclaveConfig
from qflare.enclave.statements import verify_model_signature
from tests.enclave.conftest import validate_bytes

from .conftest import ROUND, AggregatorFactory

REPO = Path(__file__).resolve().parents[2]
UPDATES = 4


def run_python(code: str | None, *, module: str | None = None, stdin: str = "") -> str:
    argv = [sys.executable, "-m", module] if module else [sys.executable, "-c", code or ""]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd=REPO, check=True, timeout=120)
    return done.stdout


def buffers_reachable(roots: Iterable[object], ignore: set[int]) -> Iterator[bytes | bytearray | mmap.mmap]:
    """Every bytes-like object reachable from ``gc``'s tracked objects and ``roots`` (contents as bytes)."""
    seen: set[int] = set(ignore)
    stack: list[object] = [*gc.get_objects(), *roots]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, bytes | bytearray | mmap.mmap):
            yield obj
        elif isinstance(obj, memoryview):
            yield obj.tobytes() if obj.c_contiguous else bytes(obj.tolist())
        elif isinstance(obj, np.ndarray):
            yield np.ndarray.tobytes(obj)  # the base method: subclasses (numpy.ma.masked) may refuse theirs
        stack.extend(gc.get_referents(obj))


def find_in_objects(needles: list[bytes], roots: Iterable[object]) -> list[int]:
    """Indices of needles found in reachable objects other than the needles themselves."""
    found: set[int] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some torch objects warn when their class is inspected
        for buf in buffers_reachable(roots, ignore={id(n) for n in needles}):
            for i, needle in enumerate(needles):
                if buf.find(needle) != -1:
                    found.add(i)
    return sorted(found)


def find_in_memory(needles: list[bytes], pid: int | None = None) -> list[int]:
    """Indices of needles found anywhere in the writable memory (Linux) of process ``pid``, by default this
    process, except (in this process) in the needle objects themselves and the scan buffer."""
    chunk = bytearray(8 << 20)
    view = memoryview(chunk)
    ignore: list[tuple[int, int]] = []
    if pid is None:  # addresses of this process: only here do they name the needles and the buffer
        ignore = [(id(n), id(n) + sys.getsizeof(n)) for n in needles]
        buf_addr = np.frombuffer(chunk, dtype=np.uint8).ctypes.data
        ignore.append((buf_addr, buf_addr + len(chunk)))
    proc = "self" if pid is None else str(pid)
    overlap = max(len(n) for n in needles) - 1
    found: set[int] = set()
    fd = os.open(f"/proc/{proc}/mem", os.O_RDONLY)
    try:
        for line in Path(f"/proc/{proc}/maps").read_text().splitlines():
            fields = line.split()
            if len(fields) < 5 or not fields[1].startswith("rw") or (len(fields) > 5 and fields[5].startswith("[v")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            pos = start
            while pos < end:
                try:
                    got = os.preadv(fd, [view[: min(len(chunk), end - pos)]], pos)
                except OSError:
                    break
                if got <= 0:
                    break
                for i, needle in enumerate(needles):
                    at = chunk.find(needle, 0, got)
                    while at != -1:
                        addr = pos + at
                        if not any(lo <= addr < hi for lo, hi in ignore):
                            found.add(i)
                        at = chunk.find(needle, at + 1, got)
                pos += got - overlap if got > overlap and pos + got < end else got
    finally:
        os.close(fd)
    return sorted(found)


def test_the_server_process_never_holds_an_enclave_private_key_or_a_plaintext_update(
    tmp_path: Path, start_aggregator: AggregatorFactory, spec: object, base_model: bytes
) -> None:
    # Prepare: a debug enclave (so the test can check it found the live keys) and a device process
    work = tmp_path / "enclave"
    backend: EnclaveAggregator = start_aggregator(work, config=EnclaveConfig(debug=True))
    identity = backend.identity()
    out_dir = tmp_path / "device"
    out_dir.mkdir()
    request = {"kem_public_key": base64.b64encode(identity.public_keys.kem.to_bytes()).decode(),
               "out_dir": str(out_dir), "round_id": ROUND, "count": UPDATES}  # fmt: skip
    device = json.loads(run_python(None, module="tests.enclave._device", stdin=json.dumps(request)))
    device_key = VerifyKey.from_bytes(base64.b64decode(device["device_public_key"]))

    # Execute: the server's side of a round, envelopes only
    backend.begin_round(ROUND, base_model, spec)  # type: ignore[arg-type]
    stored = []
    for file in device["files"]:
        envelope = parse_envelope(Path(file).read_bytes(), max_size=1 << 20)
        verify_envelope_signature(envelope, device_key)  # the server's own pre-check
        validated = validate_bytes(backend, ROUND, envelope.raw)
        backend.accumulate(validated)
        backend.seal_response(validated.handle.request_hash, b'{"accepted":true}')
        stored.append(validated.stored)
        del envelope, validated
    model = backend.finalize(ROUND)
    verify_model_signature(model, backend.model_signature(ROUND), enclave_key=identity.public_keys.signing,
                           round_id=ROUND)  # fmt: skip

    # The enclave's seeds, read from its sealed file by another process (never unsealed here)
    seeds_hex = run_python(
        "import sys; from qflare.enclave.testing import unsafe_read_sealed_key_seeds as r; "
        f"k, s = r({str(work)!r}, bytes.fromhex({identity.measurement.hex()!r})); print(k.hex(), s.hex())"
    ).split()
    digest = backend.enclave.unsafe_debug_key_digest()
    gc.collect()
    needles = [bytes.fromhex(h) for h in seeds_hex + device["probes"]]
    roots = [backend, backend.enclave, stored, model]

    # Assert: the sealed file held the live keys, and neither they nor any plaintext piece is here
    assert hashlib.sha256(needles[0] + needles[1]).hexdigest() == digest
    assert len(needles) == 2 + 3 * UPDATES
    assert find_in_objects(needles, roots) == []
    if sys.platform.startswith("linux"):
        assert find_in_memory(needles) == []

    # Assert: the searches do find a planted copy (after the real search, so it cannot disturb it)
    planted = [bytearray(needles[1]), np.array(list(needles[5]), dtype=np.uint8)]
    assert find_in_objects(needles, [planted]) == [1, 5]
    if sys.platform.startswith("linux"):
        assert {1, 5} <= set(find_in_memory(needles))
    del planted


def test_the_enclave_process_is_not_dumpable(start_aggregator: AggregatorFactory) -> None:
    # Execute
    identity = start_aggregator().identity()

    # Assert: PR_SET_DUMPABLE=0 stops same-user ptrace and /proc/<pid>/mem reads (root still can)
    assert identity.dumpable is False


@pytest.mark.skipif(os.geteuid() == 0, reason="root may read any process's memory: the limit of the simulation")
def test_another_process_of_the_same_user_cannot_read_enclave_memory(start_aggregator: AggregatorFactory) -> None:
    # Prepare
    pid = start_aggregator().enclave.pid

    # Execute / Assert
    with pytest.raises(PermissionError):
        open(f"/proc/{pid}/mem", "rb").close()
