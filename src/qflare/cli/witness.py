"""``qflare witness``: keygen, show the key, and run an independent witness of a QFLARE log."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Annotated

import typer

from qflare.errors import ConfigError

app = typer.Typer(help="An independent witness: cosigns the log's checkpoints that extend the ones it cosigned.",
                  no_args_is_help=True)

DEFAULT_ORIGIN = "qflare.local/ledger"  # qflare.server.ledger.DEFAULT_ORIGIN
KeyFile = Annotated[Path, typer.Option("--key", help="the witness key file (qflare witness keygen)")]


@app.command()
def keygen(
    key: KeyFile,
    name: Annotated[str, typer.Option(help="the witness key name, e.g. witness.example.org")],
) -> None:
    """Create a witness key and print its cosignature verifier key (for devices' ledger.witness_keys)."""
    from qflare.witness import generate_witness_key

    try:
        verifier = generate_witness_key(key, name)
    except FileExistsError:
        raise ConfigError(f"--key: {key} exists; refusing to overwrite a witness key") from None
    typer.echo(verifier.verifier_key())


@app.command("key")
def show_key(key: KeyFile) -> None:
    """Print the witness's cosignature verifier key."""
    from qflare.witness import load_witness_key

    typer.echo(load_witness_key(key).verifier().verifier_key())


@app.command()
def run(
    key: KeyFile,
    log_url: Annotated[str, typer.Option("--log", help="the log's base URL, e.g. http://127.0.0.1:8000")],
    log_key: Annotated[Path, typer.Option("--log-key", help="the log's public key (server-keys/ledger-log.pub)")],
    state: Annotated[Path, typer.Option(help="the last cosigned checkpoint")] = Path("witness-state.json"),
    origin: Annotated[str, typer.Option(help="the log's origin line")] = DEFAULT_ORIGIN,
    interval: Annotated[float, typer.Option(help="seconds between polls")] = 10.0,
    listen: Annotated[str | None, typer.Option(help="also serve POST /add-checkpoint on host:port")] = None,
    once: Annotated[bool, typer.Option(help="poll once and exit")] = False,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Poll the log, verify consistency with the last cosigned checkpoint, cosign and push the cosignature."""
    import httpx

    from qflare.crypto import VerifyKey
    from qflare.crypto.keyfile import read_public_key
    from qflare.ledger import HybridLogKey
    from qflare.witness import Witness, load_witness_key
    from qflare.witness.poller import poll_forever, poll_once

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        vk = read_public_key(log_key)
    except OSError as exc:
        raise ConfigError(f"--log-key: cannot read {log_key} ({exc.strerror})") from None
    if not isinstance(vk, VerifyKey):
        raise ConfigError(f"--log-key: {log_key} is not a signing public key")
    witness = Witness(origin=origin, log_key=HybridLogKey.from_verify_key(origin, vk), signer=load_witness_key(key),
                      state_file=state)
    if listen is not None:
        import uvicorn

        from qflare.witness.service import create_witness_app

        host, _, port = listen.rpartition(":")
        server = uvicorn.Server(uvicorn.Config(create_witness_app(witness), host=host or "127.0.0.1", port=int(port),
                                               log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
    with httpx.Client(base_url=log_url, timeout=30) as http:
        if once:
            size = poll_once(http, witness)
            typer.echo("the log has no checkpoint yet" if size is None else f"cosigned {origin} at size {size}")
            return
        poll_forever(http, witness, interval=interval)
