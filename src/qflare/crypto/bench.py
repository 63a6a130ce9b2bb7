"""Micro-benchmark of the per-request cryptography (for ``qflare bench`` and the docs).

>>> result = run_benchmark(iterations=5)
>>> print(format_benchmark(result))  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from qflare.crypto._aead import Aead
from qflare.crypto._composite import SigningKey
from qflare.crypto._xwing import XWingPrivateKey
from qflare.crypto.contexts import SigningContext
from qflare.crypto.envelope import (
    RESPONSE_OVERHEAD,
    check_timestamp,
    decrypt_envelope,
    parse_envelope,
    seal_request,
    verify_envelope_signature,
)

__all__ = ["BenchResult", "format_benchmark", "run_benchmark"]


@dataclass(frozen=True)
class BenchResult:
    """Median timings (milliseconds) of each operation and the bytes each request adds on the wire."""

    iterations: int
    payload_size: int
    timings_ms: dict[str, float]
    request_overhead_bytes: int
    response_overhead_bytes: int


def _median_ms(fn: Callable[[], object], iterations: int) -> float:
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def run_benchmark(*, iterations: int = 50, payload_size: int = 4096) -> BenchResult:
    """Time KEM, signatures, AEAD and the full request path for one ``payload_size`` request.

    Parameters
    ----------
    iterations:
        Repetitions per operation (the median is reported).
    payload_size:
        Request and response payload size in bytes (4 KiB by default).
    """
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    device = SigningKey.generate()
    server = XWingPrivateKey.generate()
    server_pub = server.public_key()
    payload = b"\xa5" * payload_size
    message = b"\x5a" * 1200 + b"\x00" * 32  # about the size of a signed header + body hash
    _, ct = server_pub.encapsulate()
    sig = device.sign(message, SigningContext.REQUEST)
    aead = Aead(Aead.generate_key())
    blob = aead.encrypt(payload, b"bench")
    now = time.time()
    fields = dict(device_id="device-0001", method="POST", path="/v1/rounds/7/updates", round_id=7)

    def seal() -> tuple[bytes, object]:
        return seal_request(device, server_pub, payload=payload, now=now, **fields)  # type: ignore[arg-type]

    envelope, opener = seal_request(device, server_pub, payload=payload, now=now, **fields)  # type: ignore[arg-type]

    def server_side() -> None:
        env = parse_envelope(envelope, max_size=1 << 24)
        check_timestamp(env, now, 300)
        verify_envelope_signature(env, device.public_key())
        decrypt_envelope(env, server, allowed_key_sources={"mlkem"})

    env = parse_envelope(envelope, max_size=1 << 24)

    def respond() -> bytes:
        _, sealer = decrypt_envelope(env, server, allowed_key_sources={"mlkem"})
        return sealer.seal(payload)

    response = respond()
    timings = {
        "kem_encapsulate": _median_ms(server_pub.encapsulate, iterations),
        "kem_decapsulate": _median_ms(lambda: server.decapsulate(ct), iterations),
        "sign": _median_ms(lambda: device.sign(message, SigningContext.REQUEST), iterations),
        "verify": _median_ms(lambda: device.public_key().verify(sig, message, SigningContext.REQUEST), iterations),
        "aead_encrypt_payload": _median_ms(lambda: aead.encrypt(payload, b"bench"), iterations),
        "aead_decrypt_payload": _median_ms(lambda: aead.decrypt(blob, b"bench"), iterations),
        "device_seal_request": _median_ms(seal, iterations),
        "server_check_and_decrypt": _median_ms(server_side, iterations),
        "device_open_response": _median_ms(lambda: opener.open(response), iterations),
    }
    return BenchResult(
        iterations=iterations,
        payload_size=payload_size,
        timings_ms=timings,
        request_overhead_bytes=len(envelope) - payload_size,
        response_overhead_bytes=RESPONSE_OVERHEAD,
    )


def format_benchmark(result: BenchResult) -> str:
    """A small plain-text table of a :class:`BenchResult`."""
    lines = [f"per-operation median over {result.iterations} runs, payload {result.payload_size} bytes"]
    width = max(len(k) for k in result.timings_ms)
    lines += [f"  {name:<{width}}  {ms:8.3f} ms" for name, ms in result.timings_ms.items()]
    lines.append(f"  request overhead   {result.request_overhead_bytes} bytes (header, framing, AEAD, signature)")
    lines.append(f"  response overhead  {result.response_overhead_bytes} bytes")
    return "\n".join(lines)
