"""A stand-in edge device run in its own process: it makes updates, seals them into envelopes for the
enclave, and tells the test only the envelope files, its public key, and short hex probes cut from
each plaintext update (so the test process never holds a plaintext update itself).

    python -m tests.enclave._device < request.json > answer.json
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

from qflare.crypto.envelope import seal_request
from qflare.crypto.kem import XWingPublicKey
from qflare.crypto.signing import SigningKey
from qflare.fl.serialize import dump_arrays
from tests.enclave.conftest import make_arrays

PROBE = 48


def main() -> None:
    request = json.load(sys.stdin)
    kem = XWingPublicKey.from_bytes(base64.b64decode(request["kem_public_key"]))
    out = Path(request["out_dir"])
    key = SigningKey.generate()
    files, probes = [], []
    for i in range(request["count"]):
        arrays = make_arrays(1000 + i, scale=0.1)
        blob = dump_arrays(arrays, {"num_examples": str(5 + i)})
        envelope, _ = seal_request(
            key, kem, device_id=f"dev-{i}", method="POST", path=f"/v1/device/rounds/{request['round_id']}/update",
            round_id=request["round_id"], payload=blob, now=time.time(),
        )  # fmt: skip
        path = out / f"update-{i}.envelope"
        path.write_bytes(envelope)
        files.append(str(path))
        tensor = arrays["fc.weight"].tobytes()
        probes += [tensor[:PROBE].hex(), tensor[len(tensor) // 2 : len(tensor) // 2 + PROBE].hex()]
        probes.append(blob[-PROBE:].hex())
    json.dump(
        {"files": files, "probes": probes, "device_public_key": base64.b64encode(key.public_key().to_bytes()).decode()},
        sys.stdout,
    )


if __name__ == "__main__":
    main()
