"""A stand-in edge device in its own process, so the test (server) process never holds its plaintext.

Reads a JSON request on stdin: the enclave's KEM key, the time to stamp, where to write, how many
devices. For each device writes a heartbeat envelope and an update envelope for round 1 of the digits
task (tensors from a seeded RNG), and answers with the public keys, the file names and hex probes cut
from the plaintext updates. Two or more devices, so the aggregate equals none of the updates.

    python -m tests.server._digits_device < request.json
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np

from qflare.crypto import SigningKey, XWingPublicKey
from qflare.crypto.envelope import seal_request
from qflare.fl.serialize import dump_arrays
from qflare.fl.tasks import get_task
from qflare.fl.train import get_arrays

PROBE = 48


def main() -> None:
    req = json.load(sys.stdin)
    kem = XWingPublicKey.from_bytes(base64.b64decode(req["kem_public_key"]))
    out, now = Path(req["out_dir"]), float(req["now"])
    shapes = get_arrays(get_task("digits").build_model())
    devices, probes = [], []
    for i in range(int(req["devices"])):
        device_id, key = f"edge_sub{i}", SigningKey.generate()
        rng = np.random.default_rng(1000 + i)
        arrays = {k: rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in shapes.items()}
        blob = dump_arrays(arrays, {"num_examples": str(17 + i), "train_loss": "0.25"})

        def seal(path: str, payload: bytes, round_id: int | None, name: str) -> str:
            envelope, _ = seal_request(key, kem, device_id=device_id, method="POST", path=path,  # noqa: B023
                                       round_id=round_id, payload=payload, now=now)
            (out / name).write_bytes(envelope)
            return str(out / name)

        devices.append({
            "device_id": device_id,
            "public_key": base64.b64encode(key.public_key().to_bytes()).decode(),
            "heartbeat": seal("/v1/device/heartbeat", b"", None, f"{device_id}-heartbeat.env"),
            "update": seal("/v1/device/rounds/1/update", blob, 1, f"{device_id}-update.env"),
        })
        big = max(arrays.values(), key=lambda a: a.size).tobytes()
        probes += [big[:PROBE].hex(), big[len(big) // 2 : len(big) // 2 + PROBE].hex(), blob[-PROBE:].hex()]
    json.dump({"devices": devices, "probes": probes}, sys.stdout)


if __name__ == "__main__":
    main()
