"""The CLI's Rich consoles, made in one place.

Messages never wrap: a warning or error reads the same in a log, a pipe or a terminal of any width
(``soft_wrap=True``; tables still fit the terminal). Tests depend on that too.
"""

from __future__ import annotations

from rich.console import Console

__all__ = ["make_console"]


def make_console(*, stderr: bool = False) -> Console:
    """A console for command output (``stderr=True`` for progress, warnings and errors)."""
    return Console(stderr=stderr, soft_wrap=True)
