"""The ``qflare`` command line (Typer): one module per command group."""
