"""``qflare he``: the operator's CKKS context (docs/privacy.md): a secret file for devices, a public one for the
server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qflare.cli.console import make_console
from qflare.errors import ConfigError

app = typer.Typer(help="Homomorphic aggregation (CKKS): make and inspect the operator's contexts.",
                  no_args_is_help=True)
console = make_console()


@app.command()
def init(
    secret_out: Annotated[Path, typer.Option(help="the context WITH its secret key: copy to devices only (0600)")
                          ] = Path(".qflare/he/ckks-secret.ctx"),
    public_out: Annotated[Path, typer.Option(help="the public context: the server's "
                                             "aggregation.he.public_context_file")
                          ] = Path(".qflare/he/ckks-public.ctx"),
    force: Annotated[bool, typer.Option(help="overwrite existing files (devices holding the old one can no longer "
                                            "take part)")] = False,
) -> None:
    """Make a fresh CKKS context (N=8192, moduli 60/40/40/60, scale 2^40) and write its two files."""
    from qflare.fl.he import make_context, write_context_files

    if secret_out.resolve() == public_out.resolve():
        raise ConfigError("--secret-out and --public-out must differ", reason="bad_option")
    existing = [str(p) for p in (secret_out, public_out) if p.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(existing)} exists; pass --force to replace the context", reason="file_exists")
    fingerprint = write_context_files(make_context(), secret_out, public_out)
    console.print(f"secret context (devices only): {secret_out}\npublic context (server): {public_out}\n"
                  f"fingerprint {fingerprint}")


@app.command()
def show(path: Annotated[Path, typer.Argument(help="a context file")]) -> None:
    """Whether a context file holds the secret key, and its public fingerprint."""
    import hashlib

    from qflare.fl.he import context_fingerprint, load_public_context, load_secret_context

    try:
        fingerprint, kind = hashlib.sha256(load_public_context(path)).hexdigest(), "public (server)"
    except ConfigError as exc:
        if exc.reason != "he_secret_key_on_server":
            raise
        fingerprint, kind = context_fingerprint(load_secret_context(path)), "SECRET (devices only)"
    console.print(f"{path}: {kind}, fingerprint {fingerprint}")
