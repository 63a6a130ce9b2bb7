"""Build a device client from ``device_config.yaml``: identity key, pinned server key, pinned CA."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from qflare.config import DeviceConfig
from qflare.crypto import SigningKey, XWingPublicKey
from qflare.crypto.keyfile import fingerprint, parse_public_key, read_private_key, read_public_key
from qflare.crypto.secret_access import TOKEN
from qflare.edge.attestation import load_trust_root
from qflare.edge.client import DeviceClient, QKDKeyFetcher, ServerUnavailable
from qflare.environment import environment
from qflare.errors import ConfigError, QFlareError

log = logging.getLogger("qflare.edge")


def load_identity(cfg: DeviceConfig, base: Path) -> SigningKey:
    path = cfg.resolve(cfg.identity_key_file, base)
    passphrase = None
    if cfg.identity_key_passphrase_env:
        passphrase = environment().named(cfg.identity_key_passphrase_env)
        if passphrase is None:
            raise ConfigError(f"identity_key_passphrase_env: ${cfg.identity_key_passphrase_env} is not set")
    try:
        key = read_private_key(path, token=TOKEN, passphrase=passphrase)
    except OSError as exc:
        raise ConfigError(f"identity_key_file: cannot read {path} ({exc.strerror})") from None
    if not isinstance(key, SigningKey):
        raise ConfigError(f"identity_key_file: {path} is not a signing identity key")
    return key


def tls_verify(cfg: DeviceConfig, base: Path) -> Any:
    """``True`` (system CAs) or an SSL context that trusts only the pinned CA."""
    if cfg.ca_file is None:
        return True
    ca = cfg.resolve(cfg.ca_file, base)
    if not ca.exists():
        raise ConfigError(f"ca_file: {ca} does not exist")
    return ssl.create_default_context(cafile=str(ca))


def load_server_key(cfg: DeviceConfig, base: Path, verify: Any = True) -> XWingPublicKey:
    """The server KEM key: from the pinned file, or fetched and checked against the pinned fingerprint."""
    if cfg.server_public_key_file is not None:
        key = read_public_key(cfg.resolve(cfg.server_public_key_file, base))
    else:
        try:
            resp = httpx.get(f"{cfg.server_url}/v1/server/keys", timeout=cfg.request_timeout_seconds, verify=verify)
            resp.raise_for_status()
            key = parse_public_key(resp.json()["kem_public_key"].encode())
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise ServerUnavailable(f"cannot fetch the server key: {exc}") from None
    if not isinstance(key, XWingPublicKey):
        raise ConfigError("the server key is not an X-Wing KEM public key", reason="server_key")
    if cfg.server_key_fingerprint is not None and fingerprint(key) != cfg.server_key_fingerprint:
        raise QFlareError(
            f"server key fingerprint {fingerprint(key)} does not match the pinned {cfg.server_key_fingerprint}",
            reason="server_key_mismatch",
        )
    return key


def qkd_fetcher(cfg: DeviceConfig, base: Path) -> QKDKeyFetcher | None:
    """The device is the master SAE: one fresh QKD key per request from its KME (never a silent downgrade)."""
    if cfg.key_source == "mlkem":
        return None
    from qflare.qkd.client import KMEClient
    from qflare.qkd.keysource import QKDKeySource

    q = cfg.qkd
    assert q is not None  # DeviceConfig refuses qkd/hybrid without it
    client = KMEClient(q.kme_url, cert=cfg.resolve(q.cert, base), key=cfg.resolve(q.key, base),
                       ca=cfg.resolve(q.ca, base), timeout=q.timeout_seconds)
    source = QKDKeySource(client, mode=cfg.key_source, peer_sae_id=q.peer_sae_id, key_size_bits=q.key_size_bits)
    return source.fetch_for_request


def build_client(cfg: DeviceConfig, base: Path, *, qkd_keys: QKDKeyFetcher | None = None) -> DeviceClient:
    """The device's client; with an attestation policy it attests the server's enclave before its first request."""
    verify = tls_verify(cfg, base)
    qkd_keys = qkd_keys or qkd_fetcher(cfg, base)
    pinned = (
        load_server_key(cfg, base, verify)
        if cfg.server_public_key_file is not None or cfg.server_key_fingerprint is not None
        else None
    )
    client = DeviceClient(
        cfg.server_url,
        cfg.device_id,
        load_identity(cfg, base),
        pinned,
        key_source=cfg.key_source,
        qkd_keys=qkd_keys,
        timeout=cfg.request_timeout_seconds,
        verify=verify,
    )
    if cfg.attestation is not None:
        a = cfg.attestation
        root = load_trust_root(cfg.resolve(a.trust_root_file, base)) if a.trust_root_file else None
        if a.allow_simulated:
            log.warning("%s: DEMO ONLY: attestation.allow_simulated accepts a simulated enclave, which has no "
                        "hardware isolation", cfg.device_id)
        client.require_attestation(a, root)  # verified before the first request is sealed
    return client


def connect(build: Callable[[], DeviceClient], cfg: DeviceConfig, *, sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic) -> DeviceClient:
    """Build the client, retrying (with the cause in each line) while the server cannot be reached: an edge
    started before its server waits for it, as the node loop does later."""
    from qflare.edge.node import GaveUp  # lazy: the node loop imports torch

    rc, log = cfg.retry, logging.getLogger("qflare.edge")
    delay, started = rc.initial_seconds, clock()
    while True:
        try:
            return build()
        except ServerUnavailable as exc:
            if rc.give_up_after_seconds is not None and clock() - started > rc.give_up_after_seconds:
                raise GaveUp(f"server unavailable for {clock() - started:.0f} s: {exc.message}",
                             reason=exc.reason) from None
            log.info("%s: server unavailable (%s: %s); retrying in %.1f s", cfg.device_id, exc.reason, exc.message,
                     delay)
            sleep(delay)
            delay = min(delay * 2, rc.max_seconds)
