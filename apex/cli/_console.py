"""The consoles every command prints to (errors go to stderr)."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def print_error(title: str, message: str) -> None:
    """An error a user can act on: a red title, then the message verbatim (no markup)."""
    err_console.print(f"[bold red]{title}[/]")
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)
