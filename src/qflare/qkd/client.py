"""ETSI GS QKD 014 client for an SAE (:class:`KMEClient`): the only module of :mod:`qflare.qkd` using httpx.

Transport is HTTPS with mutual TLS: the SAE presents its client certificate (its CN is the SAE ID)
and trusts only a pinned CA for the KME's certificate.

Key material a KME has released is never thrown away on a client-side check. ``dec_keys`` matches
the answer to the request by ``key_ID`` (the standard sets no order). If the answer is refused
(a requested ID missing, a key of the wrong size, ...), every well-formed key in it is *held* by the
client and the error says so; the KME has already marked those keys delivered and would refuse a
retry as ``key_id_reused``, so a later ``dec_keys`` for a held ID is served from the client's hold
(:meth:`KMEClient.held_key_ids`) without asking the KME again.
"""

from __future__ import annotations

import base64
import binascii
import os
import socket
import ssl
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from qflare.errors import QKDError
from qflare.qkd.keystore import QKDKey
from qflare.qkd.wire import API_PREFIX, ErrorBody, KeyContainer, KMEStatus

__all__ = ["KMEClient"]

PathLike = str | os.PathLike[str]

_KNOWN_REASONS = frozenset(
    {
        "bad_request",
        "invalid_sae_id",
        "key_id_reused",
        "key_number",
        "key_size",
        "out_of_key",
        "sae_not_authorised",
        "unauthenticated",
        "unknown_key_id",
        "unknown_sae",
        "unsupported_extension",
    }
)
_REASON_OF_STATUS = {400: "kme_bad_request", 401: "kme_unauthorized", 503: "kme_unavailable"}
_MAX_HELD = 100_000  # keys held after refused answers; far above any honest backlog (bounds memory)
_Model = TypeVar("_Model", bound=BaseModel)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _is_tls_failure(exc: BaseException) -> bool:
    return any(isinstance(e, ssl.SSLError) for e in _chain(exc))


class KMEClient:
    """ETSI GS QKD 014 client for an SAE: HTTPS with its client certificate and a pinned CA.

    Only ``ca`` is trusted for the KME's certificate (no system trust store), and the KME's
    hostname is checked against its certificate. Every failure raises :class:`QKDError`:
    ``kme_unreachable`` (connection refused, timeout), ``kme_certificate`` (TLS handshake failed:
    the KME's certificate is not from the pinned CA, or the KME refused ours), ``kme_malformed``
    (a 200 response that is not a valid ETSI body), ``key_size`` (a key of the wrong length), or the
    KME's own reason (``out_of_key``, ``unknown_key_id``, ``key_id_reused``, ...).

    Parameters
    ----------
    base_url:
        KME address, e.g. ``https://127.0.0.1:8443``.
    cert, key:
        This SAE's client certificate and key (PEM); the certificate's CN is the SAE ID.
    ca:
        CA certificate the KME's server certificate must chain to.
    timeout:
        Seconds per request.
    transport:
        Custom httpx transport (tests use :class:`httpx.MockTransport`).
    """

    def __init__(
        self,
        base_url: str,
        *,
        cert: PathLike,
        key: PathLike,
        ca: PathLike,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        try:
            ctx = ssl.create_default_context(cafile=os.fspath(ca))
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
        except (OSError, ssl.SSLError) as exc:
            raise QKDError(f"cannot load SAE TLS material: {exc}", reason="kme_certificate") from None
        self.base_url = base_url.rstrip("/")
        self._ssl = ctx
        if transport is None:
            # httpcore writes a POST's headers and body separately: without TCP_NODELAY, Nagle holds
            # the body until the KME's delayed ACK (~40 ms per request).
            transport = httpx.HTTPTransport(verify=ctx, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
        self._held: OrderedDict[tuple[str, str], QKDKey] = OrderedDict()  # (master SAE, key_ID) -> key
        self._held_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KMEClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, path: str, model: type[_Model], body: dict[str, Any] | None = None) -> _Model:
        try:
            response = self._http.request(method, API_PREFIX + path, json=body)
        except httpx.TimeoutException:
            raise QKDError(f"KME {self.base_url} timed out", reason="kme_unreachable") from None
        except httpx.TransportError as exc:
            if _is_tls_failure(exc):
                raise QKDError(f"TLS with KME {self.base_url} failed: {exc}", reason="kme_certificate") from None
            if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError) and self._refuses_our_certificate():
                raise QKDError(
                    f"KME {self.base_url} closes every connection right after the TLS handshake: "
                    "it does not accept this SAE's client certificate",
                    reason="kme_certificate",
                ) from None
            raise QKDError(f"KME {self.base_url} unreachable: {exc}", reason="kme_unreachable") from None
        if response.status_code != 200:
            raise self._error(response)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise QKDError(
                f"KME {self.base_url} sent a malformed {model.__name__}: {exc.error_count()} error(s)",
                reason="kme_malformed",
            ) from None

    def _refuses_our_certificate(self) -> bool:
        """Probe after a silent disconnect: does the KME drop us as soon as TLS is up?

        With TLS 1.3 the server checks the client certificate after the client has finished its
        handshake, and Python's asyncio server then closes without sending the alert; the client
        only sees a connection closed before any response. A KME that accepted the certificate
        keeps an idle connection open, waiting for a request; one that refused it closes at once.
        """
        url = httpx.URL(self.base_url)
        host, port = url.host, url.port or 443
        try:
            raw = socket.create_connection((host, port), timeout=2.0)
        except OSError:
            return False
        try:
            with self._ssl.wrap_socket(raw, server_hostname=host) as tls:
                tls.settimeout(0.5)
                return tls.recv(1) == b""
        except TimeoutError:
            return False
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return True
        except OSError:
            return False
        finally:
            raw.close()

    def _error(self, response: httpx.Response) -> QKDError:
        reason = _REASON_OF_STATUS.get(response.status_code, "kme_error")
        message = f"KME {self.base_url} answered HTTP {response.status_code}"
        try:
            body = ErrorBody.model_validate_json(response.content)
        except ValidationError:
            return QKDError(message, reason=reason)
        for detail in body.details:
            if detail.get("reason") in _KNOWN_REASONS:
                reason = str(detail["reason"])
                break
        return QKDError(f"{message}: {body.message[:200]}", reason=reason)

    def status(self, slave_sae_id: str) -> KMEStatus:
        """Get status (ETSI 5.1) of the link to ``slave_sae_id``."""
        return self._request("GET", f"/{slave_sae_id}/status", KMEStatus)

    def enc_keys(self, slave_sae_id: str, *, number: int = 1, size: int | None = None) -> list[QKDKey]:
        """Get key (ETSI 5.2): ``number`` new keys of ``size`` bits to share with ``slave_sae_id``."""
        body: dict[str, Any] = {"number": number}
        if size is not None:
            body["size"] = size
        keys = self._keys(self._request("POST", f"/{slave_sae_id}/enc_keys", KeyContainer, body))
        if len(keys) != number:
            raise QKDError(f"KME returned {len(keys)} keys, {number} requested", reason="kme_malformed")
        self._check_sizes(keys, size)
        return keys

    def dec_keys(self, master_sae_id: str, key_ids: Sequence[str], *, size: int | None = None) -> list[QKDKey]:
        """Get key with key IDs (ETSI 5.3): the keys ``master_sae_id`` obtained under ``key_ids``.

        Returns the keys in the order of ``key_ids``, whatever order the KME answered in. Keys held
        from an earlier refused answer are served first and only the rest is asked of the KME.

        Raises
        ------
        QKDError
            ``kme_malformed`` (an ID asked for is missing, an ID repeated), ``key_size`` (a key of
            another size than ``size``), or any KME or transport failure. On a client-side refusal
            the delivered keys are held, not lost (the message names how many).
        """
        wanted = list(key_ids)
        if len(set(wanted)) != len(wanted):
            raise QKDError("a key_ID is listed twice", reason="key_id_reused")
        with self._held_lock:
            missing = [k for k in wanted if (master_sae_id, k) not in self._held]
        if missing:
            body = {"key_IDs": [{"key_ID": k} for k in missing]}
            delivered, problems = self._parse(self._request("POST", f"/{master_sae_id}/dec_keys", KeyContainer, body))
            self._hold(master_sae_id, delivered)
            if problems:
                raise QKDError(
                    f"KME answer refused ({problems[0]}); its {len(delivered)} well-formed key(s) are held "
                    "by this client (held_key_ids())",
                    reason="kme_malformed",
                )
        with self._held_lock:
            absent = [k for k in wanted if (master_sae_id, k) not in self._held]
            if absent:
                raise QKDError(
                    f"KME did not return {len(absent)} of the {len(wanted)} requested key_IDs; "
                    f"{len(self._held)} delivered key(s) are held by this client (held_key_ids())",
                    reason="kme_malformed",
                )
            keys = [self._held[(master_sae_id, k)] for k in wanted]
            self._check_sizes(keys, size, held=True)
            for k in wanted:
                del self._held[(master_sae_id, k)]
        return keys

    def held_key_ids(self) -> list[tuple[str, str]]:
        """``(master_SAE_ID, key_ID)`` of delivered keys held after a refused ``dec_keys`` answer."""
        with self._held_lock:
            return list(self._held)

    def _hold(self, master_sae_id: str, keys: Sequence[QKDKey]) -> None:
        with self._held_lock:
            for key in keys:
                self._held[(master_sae_id, key.key_id)] = key
            while len(self._held) > _MAX_HELD:  # a flooding KME must not exhaust memory: oldest go first
                self._held.popitem(last=False)

    def _check_sizes(self, keys: Sequence[QKDKey], size: int | None, *, held: bool = False) -> None:
        if size is None:
            return
        for key in keys:
            if len(key.key) * 8 != size:
                note = " (the keys stay held by this client)" if held else ""
                raise QKDError(
                    f"KME returned a {len(key.key) * 8}-bit key, {size} bits requested{note}", reason="key_size"
                )

    @classmethod
    def _keys(cls, container: KeyContainer) -> list[QKDKey]:
        keys, problems = cls._parse(container)
        if problems:
            raise QKDError(f"KME answer refused: {problems[0]}", reason="kme_malformed")
        return keys

    @staticmethod
    def _parse(container: KeyContainer) -> tuple[list[QKDKey], list[str]]:
        """The well-formed keys of ``container`` (first of each key_ID) and what was wrong with the rest."""
        out: dict[str, QKDKey] = {}
        problems: list[str] = []
        for item in container.keys:
            try:
                uuid.UUID(item.key_ID)
                material = base64.b64decode(item.key, validate=True)
            except (ValueError, binascii.Error):
                problems.append("a key_ID or key that does not parse")
                continue
            if item.key_ID in out:
                problems.append("a key_ID returned twice")
                continue
            out[item.key_ID] = QKDKey(item.key_ID, material)
        return list(out.values()), problems
