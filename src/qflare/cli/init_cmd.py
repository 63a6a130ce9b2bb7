"""``qflare init``: a local CA, a TLS server certificate, the server's post-quantum keys, an operator token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qflare.cli.console import make_console
from qflare.errors import ConfigError

console = make_console()


def init(
    directory: Annotated[Path, typer.Option("--dir", help="where to put everything")] = Path(".qflare"),
    hostname: Annotated[list[str] | None, typer.Option("--hostname", help="DNS names for the server certificate")]
    = None,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="IP addresses for the server certificate")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing CA")] = False,
) -> None:
    """Create a local CA and server certificate for HTTPS (devices pin ca.pem) and the server's keys."""
    from qflare.cli.server_cmd import resolve_admin_token
    from qflare.crypto.tls import create_ca, issue_cert, write_private_pem, write_public_pem
    from qflare.server.keys import ServerKeys

    tls = directory / "tls"
    if (tls / "ca.pem").exists() and not force:
        raise ConfigError(f"{tls / 'ca.pem'} exists; use --force to replace the CA", reason="ca_exists")
    tls.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = create_ca("QFLARE local CA")
    cert, key = issue_cert(ca_cert, ca_key, "qflare-server", server=True, dns_names=tuple(hostname or ["localhost"]),
                           ip_addresses=tuple(ip or ["127.0.0.1"]))
    write_public_pem(tls / "ca.pem", ca_cert)
    write_private_pem(tls / "ca.key", ca_key)
    write_public_pem(tls / "server.pem", cert)
    write_private_pem(tls / "server.key", key)
    keys = ServerKeys.load_or_create(directory / "server-keys")
    resolve_admin_token(None, directory / "admin_token")
    console.print(f"CA:            {tls / 'ca.pem'}  (devices pin this: ca_file)")
    console.print(f"server TLS:    {tls / 'server.pem'}, {tls / 'server.key'}")
    console.print(f"server keys:   {directory / 'server-keys'}  (KEM fingerprint {keys.fingerprint()}; devices pin"
                  " it only with enclave.backend: none; with the enclave on they pin its attested measurement)")
    console.print(f"operator token: {directory / 'admin_token'}")
    console.print(
        f"serve HTTPS:   qflare server --tls-cert {tls / 'server.pem'} --tls-key {tls / 'server.key'} "
        f"--key-dir {directory / 'server-keys'}"
    )
    console.print("then copy the device_config.yaml lines `qflare server` prints at start (attestation or key pin)")
