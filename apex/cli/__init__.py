"""The ``apex`` command line.

Each command group lives in its own module exposing ``register(app)``; add a
group by writing ``apex/cli/<group>.py`` and listing it in :data:`_GROUPS`.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="apex",
    help="Apex: an event-sourced streaming orchestrator for agent workflows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """Apex: an event-sourced streaming orchestrator for agent workflows."""


def _register_groups() -> None:
    from apex.cli import audit, demo, dev, projections, streams, triggers, worker

    for module in (dev, demo, streams, triggers, worker, projections, audit):
        module.register(app)


_register_groups()


def main() -> None:
    """Entry point of the ``apex`` script."""
    app()
