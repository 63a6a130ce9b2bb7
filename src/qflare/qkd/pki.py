"""A demo PKI for a simulated KME pair and its SAEs (certificates from :mod:`qflare.crypto.tls`).

Layout written by :func:`create_demo_pki` (private keys mode 0600)::

    ca.pem  ca.key                      the CA both KMEs trust for SAEs, and SAEs pin for KMEs
    kme-a.pem  kme-a.key                server certificate of KME A (SAN localhost, 127.0.0.1)
    kme-b.pem  kme-b.key                server certificate of KME B
    <sae>.pem  <sae>.key                client certificate of each SAE; its CN is the SAE ID

It is a demonstration PKI: one CA, keys on disk unencrypted. A deployment issues KME and SAE
certificates from its own PKI and keeps the CA key offline.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qflare.crypto.tls import create_ca, issue_cert, write_private_pem, write_public_pem
from qflare.errors import ConfigError

__all__ = ["DemoPKI", "create_demo_pki"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class DemoPKI:
    """Paths of a demo PKI (see the module docstring)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"


def create_demo_pki(
    directory: str | os.PathLike[str],
    *,
    sae_ids: Sequence[str] = ("edge-1", "server"),
    kme_ids: Sequence[str] = ("kme-a", "kme-b"),
    ca_name: str = "QFLARE demo KME CA",
    hosts: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1",),
) -> DemoPKI:
    """Create a CA, a server certificate per KME and a client certificate per SAE in ``directory``.

    Raises
    ------
    ConfigError
        A name that is not a safe file name, or a name used twice.
    """
    names = [*kme_ids, *sae_ids]
    for name in names:
        if not _SAFE_NAME.match(name) or name == "ca":
            raise ConfigError(f"not a usable KME/SAE name: {name!r}", reason="invalid_sae_id")
    if len(set(names)) != len(names):
        raise ConfigError("KME and SAE names must be distinct", reason="invalid_sae_id")
    pki = DemoPKI(Path(directory))
    pki.directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = create_ca(ca_name)
    write_public_pem(pki.ca, ca_cert)
    write_private_pem(pki.directory / "ca.key", ca_key)
    for name in kme_ids:
        cert, key = issue_cert(ca_cert, ca_key, name, server=True, client=False, dns_names=hosts, ip_addresses=ips)
        write_public_pem(pki.cert(name), cert)
        write_private_pem(pki.key(name), key)
    for name in sae_ids:
        cert, key = issue_cert(ca_cert, ca_key, name, server=False, client=True, dns_names=(), ip_addresses=())
        write_public_pem(pki.cert(name), cert)
        write_private_pem(pki.key(name), key)
    return pki
