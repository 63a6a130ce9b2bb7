"""HTTP client for the device side of the QFLARE protocol (httpx).

Every request is a post-quantum envelope (``qflare.crypto.envelope.seal_request``): a fresh X-Wing
encapsulation to the server key, the payload under AES-256-GCM with a one-time request key, and the
device's composite ML-DSA-65 + Ed25519 signature. Responses are opened with that request's response key,
so a downloaded model is confidential and bound to the request that asked for it.

Server refusals come back as the same typed :mod:`qflare.errors` exceptions the server raised, with the
server's reason code; transport failures and 5xx answers raise :class:`ServerUnavailable`, which the node
loop retries with backoff.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from qflare import errors as e
from qflare.config import AttestationConfig
from qflare.crypto import SigningKey, VerifyKey, XWingPublicKey
from qflare.crypto.envelope import ResponseOpener, seal_request
from qflare.edge.attestation import AttestedEnclave, attest
from qflare.fl.serialize import sha256_hex

__all__ = ["MAX_RETRY_AFTER_SECONDS", "DeviceClient", "QKDKeyFetcher", "ServerUnavailable", "error_from_response",
           "retry_after_of"]

ENVELOPE_MEDIA_TYPE = "application/vnd.qflare.envelope"
log = logging.getLogger("qflare.edge")

# Returns (qkd key, key ids) for one request; raises QKDError when no key can be had.
QKDKeyFetcher = Callable[[], tuple[bytes, tuple[str, ...]]]


class ServerUnavailable(e.QFlareError):
    """The server could not be reached or answered 5xx (or 429); worth retrying.

    ``retry_after`` is the server's ``Retry-After`` in seconds when it sent one (a hint, as every plain
    answer: the node waits at least that long, never less than its own backoff); ``None`` otherwise."""

    default_reason = "server_unavailable"
    retry_after: float | None = None

    @property
    def busy(self) -> bool:
        """The server turned the upload away unread (``server_busy``): nothing of it was recorded."""
        return self.reason == "server_busy"


KEEPALIVE_SECONDS = 2.0
"""An idle connection is reused for at most this long: well inside the server's keep-alive (5 s by default,
``server.keep_alive_seconds``). httpx's default is the same 5 s as the server's, so a request could be
sent on a connection at the moment the server closed it: the server's kernel answers the request's
bytes with a reset, and the device sees a ``ReadError`` (636 of them at 1000 devices,
``docs/benchmarks.md``)."""

MAX_RETRY_AFTER_SECONDS = 300.0
"""A ``Retry-After`` above this is taken as this: a plain answer must not park a device for hours."""


def retry_after_of(resp: httpx.Response) -> float | None:
    """The answer's ``Retry-After`` in seconds (delta-seconds form only), bounded; ``None`` if absent or bad."""
    raw = resp.headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return None
    if not seconds >= 0:  # also NaN
        return None
    return min(seconds, MAX_RETRY_AFTER_SECONDS)


_BY_STATUS: dict[int, type[e.QFlareError]] = {
    400: e.MalformedPayload,
    401: e.AuthenticationError,
    403: e.PermissionDenied,
    404: e.NotFound,
    409: e.Conflict,
    413: e.PayloadTooLarge,
    422: e.InvalidInput,
}


# The most specific class for a reason code (e.g. ``decryption_failed`` -> DecryptionFailed).
_BY_REASON: dict[str, type[e.QFlareError]] = {
    cls.default_reason: cls
    for cls in (e.DecryptionFailed, e.InvalidSignature, e.StaleRequest, e.UnknownDevice, e.ReplayDetected,
                e.Unauthenticated,
                e.RoundClosed, e.DuplicateUpdate, e.NonFiniteValues)
}


SEALED_MEDIA_TYPE = "application/vnd.qflare.response"


def error_from_response(resp: httpx.Response, opener: ResponseOpener | None = None) -> e.QFlareError:
    """Turn an error response into the matching typed exception, keeping the server's reason code.

    A refusal sealed under the request's response key (``application/vnd.qflare.response``) is opened
    with ``opener`` and marked ``authenticated``; any other refusal is plain JSON that an on-path attacker
    could have written, and stays ``authenticated = False`` (a hint: ``docs/protocol.md``, "Errors").
    """
    reason, message, raw, authenticated = "http_error", resp.text[:500], resp.content, False
    if opener is not None and resp.headers.get("content-type", "").startswith(SEALED_MEDIA_TYPE):
        try:
            raw, authenticated = opener.open(resp.content), True
        except e.QFlareError:
            raw = b""  # sealed, but not for this request: ignore its content entirely
    try:
        body = json.loads(raw)
        reason = str(body["error"]["reason"])
        message = str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        pass
    if resp.status_code >= 500 or resp.status_code == 429:
        # 429 (rate limited, with Retry-After) is retried like a 5xx: back off, then a fresh envelope.
        busy = ServerUnavailable(f"server answered {resp.status_code}: {message}", reason=reason)
        busy.retry_after = retry_after_of(resp)
        err: e.QFlareError = busy
    else:
        cls = _BY_REASON.get(reason) or _BY_STATUS.get(resp.status_code, e.QFlareError)
        err = cls(f"{resp.status_code} {reason}: {message}", reason=reason)
    err.authenticated = authenticated
    return err


class DeviceClient:
    """The device's view of the server: heartbeat, task, model download, update upload.

    Parameters
    ----------
    base_url:
        The server, e.g. ``http://127.0.0.1:8000``.
    device_id, device_key:
        The device's identity and its composite signing key.
    server_kem_public:
        The server's pinned X-Wing public key.
    key_source, qkd_keys:
        ``"mlkem"`` (default), or ``"qkd"``/``"hybrid"`` with a fetcher of one QKD key per request.
    transport, verify:
        ``httpx`` transport (tests: ``httpx.MockTransport``) and TLS verification (a CA file to pin).
    clock:
        Seconds since the epoch, stamped into each request.
    """

    def __init__(
        self,
        base_url: str,
        device_id: str,
        device_key: SigningKey,
        server_kem_public: XWingPublicKey | None,
        *,
        key_source: str = "mlkem",
        qkd_keys: QKDKeyFetcher | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        verify: Any = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if key_source != "mlkem" and qkd_keys is None:
            raise e.ConfigError(f"key_source {key_source} needs a QKD key source", reason="qkd_required")
        self.device_id = device_id
        self._key = device_key
        self._server_pub = server_kem_public
        self.enclave: AttestedEnclave | None = None
        self._attestation: tuple[AttestationConfig, VerifyKey | None] | None = None
        self._key_source = key_source
        self._qkd_keys = qkd_keys
        self._clock = clock
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport, verify=verify,
                                  limits=httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS))
        self.bytes_sent = 0  # HTTP request bodies sent (envelopes), for the cost log
        self.bytes_received = 0

    def close(self) -> None:
        self._http.close()

    @property
    def http(self) -> httpx.Client:
        """The underlying HTTP client (for the ledger's unauthenticated read API)."""
        return self._http

    def require_attestation(self, policy: AttestationConfig, trust_root: VerifyKey | None) -> None:
        """From now on, send nothing until the server's enclave quote verifies under ``policy``."""
        self._attestation = (policy, trust_root)

    @property
    def attestation_required(self) -> bool:
        return self._attestation is not None

    def attest(self) -> AttestedEnclave:
        """Verify a fresh quote of the server's enclave and use the keys it binds from now on.

        Runs before the first request, and again when the enclave's key appears to have changed.
        Raises :class:`AttestationError` (with the reason) if the quote does not verify.
        """
        if self._attestation is None:
            raise e.ConfigError("no attestation policy configured", reason="no_attestation_policy")
        enclave = attest(self._http, *self._attestation)
        if self._server_pub is not None and self.enclave is None and self._server_pub != enclave.kem:
            raise e.AttestationError("the attested enclave key differs from the pinned server key",
                                     reason="key_mismatch")
        self.enclave, self._server_pub = enclave, enclave.kem
        log.info("%s: enclave attested: measurement %s signer %s%s", self.device_id, enclave.measurement[:16],
                 enclave.signer[:16], " (simulated, allowed by policy)" if enclave.simulated else "")
        return enclave

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def seal(self, path: str, payload: bytes, round_id: int | None = None) -> tuple[bytes, Any]:
        """Build the envelope for one request; returns (envelope bytes, response opener)."""
        if self._attestation is not None and self.enclave is None:
            self.attest()
        if self._server_pub is None:
            raise e.ConfigError("no server key: pin one or configure attestation", reason="no_server_key")
        qkd_key, key_ids = (None, ()) if self._qkd_keys is None else self._qkd_keys()
        return seal_request(
            self._key, self._server_pub, device_id=self.device_id, method="POST", path=path, round_id=round_id,
            payload=payload, now=self._clock(), key_source=self._key_source, qkd_key=qkd_key, key_ids=key_ids,
        )

    def send(self, path: str, envelope: bytes, opener: ResponseOpener | None = None) -> httpx.Response:
        """POST a ready envelope; raises the typed error for a refusal (opened with ``opener`` if sealed)."""
        try:
            resp = self._http.post(path, content=envelope, headers={"Content-Type": ENVELOPE_MEDIA_TYPE})
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"cannot reach server: {exc.__class__.__name__}: {exc}") from None
        # HTTP bodies both ways, for the device's cost log (headers and TLS framing not counted)
        self.bytes_sent += len(envelope)
        self.bytes_received += len(resp.content)
        if resp.status_code >= 400:
            raise error_from_response(resp, opener)
        return resp

    def _call(self, path: str, payload: bytes = b"", round_id: int | None = None) -> bytes:
        envelope, opener = self.seal(path, payload, round_id)
        return bytes(opener.open(self.send(path, envelope, opener).content))

    def _call_json(self, path: str, payload: bytes = b"", round_id: int | None = None) -> dict[str, Any]:
        raw = self._call(path, payload, round_id)
        try:
            obj = json.loads(raw)
        except ValueError:
            raise e.MalformedPayload("server sent a response that is not JSON", reason="bad_response") from None
        if not isinstance(obj, dict):
            raise e.MalformedPayload("server sent a JSON response that is not an object", reason="bad_response")
        return obj

    def heartbeat(self) -> dict[str, Any]:
        return self._call_json("/v1/device/heartbeat")

    def task(self, wait: float = 0.0) -> dict[str, Any]:
        """The next task; with ``wait`` > 0 the server may hold a ``wait`` answer that long (long-poll)."""
        return self._call_json(f"/v1/device/task?wait={wait:g}" if wait > 0 else "/v1/device/task")

    def download_model(self, version: int, expected_sha256: str) -> bytes:
        """Download a global model and check it against the SHA-256 the task announced."""
        blob = self._call(f"/v1/device/model/{version}")
        if sha256_hex(blob) != expected_sha256:
            raise e.InvalidInput(f"model v{version} does not match its announced SHA-256", reason="model_hash")
        return blob

    def report_metrics(self, report: dict[str, Any]) -> dict[str, Any]:
        """Report this device's held-out metrics (personalised FL), signed like every request."""
        return self._call_json("/v1/device/metrics", json.dumps(report, separators=(",", ":")).encode())

    def upload_update(self, round_id: int, blob: bytes, base_version: int | None = None) -> dict[str, Any]:
        """Upload an update; ``base_version`` (async rounds) is the model version it was trained on, signed
        as part of the request target."""
        query = "" if base_version is None else f"?base_version={int(base_version)}"
        return self._call_json(f"/v1/device/rounds/{round_id}/update{query}", blob, round_id)
