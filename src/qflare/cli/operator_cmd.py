"""``qflare operator``: named dashboard accounts (scrypt-hashed passwords; no default account)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qflare.cli.console import make_console
from qflare.environment import environment
from qflare.errors import ConfigError

app = typer.Typer(help="Operator accounts for the dashboard: add, list.", no_args_is_help=True)
console = make_console()

AccountsFile = Annotated[Path, typer.Option("--file", help="the server's --operators-file")]
DEFAULT_FILE = Path(".qflare/operators.json")


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="the operator's name")],
    password_env: Annotated[str, typer.Option(help="environment variable holding the password (12+ characters)")],
    file: AccountsFile = DEFAULT_FILE,
) -> None:
    """Add an operator (or set a new password); the server reads the file at start."""
    from qflare.server.operators import OperatorAccounts

    password = environment().named(password_env)
    if not password:
        raise ConfigError(f"--password-env: ${password_env} is empty or not set", reason="bad_option")
    OperatorAccounts(file).add(name, password)
    console.print(f"operator {name} saved in {file} (scrypt; restart the server to use it)")


@app.command("list")
def list_operators(file: AccountsFile = DEFAULT_FILE) -> None:
    """The operators in the file (names only)."""
    from qflare.server.operators import OperatorAccounts

    for name in OperatorAccounts(file).names():
        print(name)
