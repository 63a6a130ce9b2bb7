"""Adversaries for ``qflare simulate --attackers``: they attack the running server over real HTTP.

- ``impersonate``: holds its own key and claims to be an enrolled device.
- ``replay``: a man in the middle (a recording proxy in front of the server for one honest device)
  resends each captured request byte for byte.
- ``tamper``: the same man in the middle alters a captured request and sends it: one random bit flipped
  anywhere, and one in the nonce so that the copy is not simply caught as a replay but has to fail
  the signature (or parsing) check.
- ``revoked``: a device that was enrolled, talked once, was revoked, and keeps sending signed requests.

Each attacker counts its attempts and how the server answered. An attempt is *rejected* when the server
answers 4xx; any 2xx is counted as ``accepted`` (a breach; the tests require zero).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from qflare.crypto import SigningKey, XWingPublicKey
from qflare.crypto.envelope import seal_request
from qflare.sim.net import free_port

ATTACKS = ("impersonate", "replay", "tamper", "revoked")
TASK_PATH = "/v1/device/task"
# The 16 nonce bytes of an envelope: 4-byte header length, then magic(4) version(2) suite(2)
# key_source(1) timestamp(8) nonce_len(1) (docs/protocol.md).
NONCE_SLICE = slice(22, 38)


@dataclass
class AttackStats:
    attempts: int = 0
    rejected: int = 0
    accepted: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def record(self, resp: httpx.Response) -> None:
        self.attempts += 1
        if 400 <= resp.status_code < 500:
            self.rejected += 1
            try:
                self.reasons[str(resp.json()["error"]["reason"])] += 1
            except (ValueError, KeyError, TypeError):
                self.reasons["unparsed"] += 1
        elif resp.status_code < 300:
            self.accepted += 1

    def as_dict(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "rejected": self.rejected, "accepted": self.accepted,
                "reasons": dict(sorted(self.reasons.items()))}


class RecordingProxy:
    """A man in the middle: forwards one device's traffic to the server and keeps every request it saw."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.captured: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._client = httpx.AsyncClient(base_url=upstream, timeout=120)
        app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="mitm-proxy", daemon=True)

    async def _forward(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        if path.startswith("/v1/device/"):
            # The signed target (docs/protocol.md 10.2) is the path with its query (e.g. a long-poll's ?wait=).
            target = f"{path}?{request.url.query}" if request.url.query else path
            with self._lock:
                self.captured.append((target, body))
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type",)}
        resp = await self._client.request(request.method, path, params=request.query_params, content=body,
                                          headers=headers)
        return Response(resp.content, status_code=resp.status_code, media_type=resp.headers.get("content-type"))

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def take(self) -> list[tuple[str, bytes]]:
        with self._lock:
            out, self.captured = self.captured, []
        return out


class AttackCampaign:
    """Runs the chosen attacks in background threads until :meth:`stop`.

    Parameters
    ----------
    server_url:
        The real server.
    server_kem_public:
        The server's public KEM key (public knowledge).
    victim_id:
        The enrolled device the impersonator claims to be.
    proxy:
        The recording proxy in front of one honest device (replay and tamper use what it captured).
    revoked:
        ``(device_id, key)`` of a device the operator revoked.
    """

    def __init__(
        self,
        attacks: list[str],
        *,
        server_url: str,
        server_kem_public: XWingPublicKey,
        victim_id: str,
        proxy: RecordingProxy | None,
        revoked: tuple[str, SigningKey] | None,
        interval: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.attacks = attacks
        self.url = server_url
        self.server_pub = server_kem_public
        self.victim = victim_id
        self.proxy = proxy
        self.revoked = revoked
        self.interval = interval
        self.stats = {a: AttackStats() for a in attacks}
        self._rng = random.Random(seed)
        self._impostor = SigningKey.generate()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="attackers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, dict[str, Any]]:
        self._stop.set()
        self._thread.join(timeout=30)
        with httpx.Client(base_url=self.url, timeout=30) as http:
            self._round(http)  # a last volley with whatever was captured since
        return {a: s.as_dict() for a, s in self.stats.items()}

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self._stop.wait(self.interval):
                with contextlib.suppress(httpx.HTTPError):
                    self._round(http)

    def _signed(self, key: SigningKey, device_id: str) -> bytes:
        envelope, _ = seal_request(key, self.server_pub, device_id=device_id, method="POST", path=TASK_PATH,
                                   round_id=None, payload=b"", now=time.time())
        return envelope

    def _send(self, http: httpx.Client, attack: str, path: str, envelope: bytes) -> None:
        self.stats[attack].record(http.post(path, content=envelope))

    def _round(self, http: httpx.Client) -> None:
        if "impersonate" in self.stats:
            self._send(http, "impersonate", TASK_PATH, self._signed(self._impostor, self.victim))
        if "revoked" in self.stats and self.revoked is not None:
            device_id, key = self.revoked
            self._send(http, "revoked", TASK_PATH, self._signed(key, device_id))
        captured = self.proxy.take() if self.proxy is not None else []
        for path, envelope in captured:
            if "replay" in self.stats:
                self._send(http, "replay", path, envelope)
            if "tamper" in self.stats and len(envelope) > NONCE_SLICE.stop:
                self._send(http, "tamper", path, self._tamper(envelope))

    def _tamper(self, envelope: bytes) -> bytes:
        out = bytearray(envelope)
        out[self._rng.randrange(NONCE_SLICE.start, NONCE_SLICE.stop)] ^= 1 << self._rng.randrange(8)
        pos = self._rng.randrange(len(out))
        if not NONCE_SLICE.start <= pos < NONCE_SLICE.stop:
            out[pos] ^= 1 << self._rng.randrange(8)
        return bytes(out)
