"""The ``qflare`` entry point: wires the command groups together and maps errors to exit codes."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from qflare.cli import (
    bench,
    device,
    edge_cmd,
    enclave,
    he_cmd,
    init_cmd,
    ledger,
    operator_cmd,
    ops,
    qkd,
    server_cmd,
    simulate_cmd,
    witness,
)
from qflare.cli.console import make_console
from qflare.errors import (
    AuthenticationError,
    ConfigError,
    PermissionDenied,
    QFlareError,
)

app = typer.Typer(
    name="qflare",
    help="QFLARE: quantum-safe federated learning for fleets of edge devices.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # never print locals: they may hold keys
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from qflare import __version__

        print(f"qflare {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """QFLARE: quantum-safe federated learning for fleets of edge devices."""


app.command("server")(server_cmd.server)
app.command("edge")(edge_cmd.edge)
app.command("simulate")(simulate_cmd.simulate)
app.command("init")(init_cmd.init)
app.add_typer(device.app, name="device")
app.add_typer(qkd.app, name="qkd")
app.add_typer(qkd.kme_app, name="kme")  # `qflare kme serve` = `qflare qkd kme serve`
app.add_typer(enclave.app, name="enclave")
app.add_typer(bench.app, name="bench")
app.add_typer(ledger.app, name="ledger")
app.add_typer(witness.app, name="witness")
app.command("status")(ops.status)
app.command("events")(ops.events)
app.add_typer(ops.rounds_app, name="rounds")
app.add_typer(ops.model_app, name="model")
app.add_typer(operator_cmd.app, name="operator")
app.add_typer(he_cmd.app, name="he")

# Exit codes by error family (0 ok, 1 unexpected, 2 usage from Typer).
EXIT_CODES: tuple[tuple[type[QFlareError], int], ...] = (
    (ConfigError, 3),
    (AuthenticationError, 4),
    (PermissionDenied, 5),
    (QFlareError, 10),
)

_err = make_console(stderr=True)


def main() -> None:
    try:
        app()
    except QFlareError as exc:
        _err.print(f"[bold red]error[/] {escape(f'[{exc.reason}] {exc.message}')}", soft_wrap=True)
        code = next(c for cls, c in EXIT_CODES if isinstance(exc, cls))
        sys.exit(code)
