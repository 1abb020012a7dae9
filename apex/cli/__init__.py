"""The ``apex`` command line.

Each command group lives in its own module exposing ``register(app)``; add a
group by writing ``apex/cli/<group>.py`` and listing it in :data:`_GROUPS`.
"""

from __future__ import annotations

from typing import Any

import typer

app = typer.Typer(
    name="apex",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """Apex: an event-sourced streaming orchestrator for agent workflows.

    A workflow is a DAG of steps, each run by an agent worker. Every change of
    every run is an event on Kafka (the log is the truth); the orchestrator
    decides, workers act, PostgreSQL read models and the results topic tell.

    A first session:

      apex dev up                              start Kafka and PostgreSQL

      apex definitions register flow.yaml      register a workflow

      apex runs start flow -i '{"a": 1}' --wait  start a run, wait for its result

      apex runs watch RUN_ID                   follow a run's steps live

      apex approvals list                      what waits for your decision

    Settings are APEX_* environment variables (`apex dev settings` lists them).
    Commands that print take --json for scripts. Exit status: 0 done, 1 failed
    (the message says why), 2 a wrong command line. `apex COMMAND --help` tells more.
    """


def _register_groups() -> None:
    from apex.cli import (
        approvals,
        audit,
        bench,
        definitions,
        demo,
        dev,
        gateway,
        messaging,
        projections,
        runs,
        streams,
        triggers,
        worker,
    )

    for module in (
        definitions,
        runs,
        approvals,
        messaging,
        gateway,
        dev,
        demo,
        streams,
        triggers,
        worker,
        projections,
        audit,
        bench,
    ):
        module.register(app)
    _group_in_panels()


_PANELS = {
    "Use Apex": ("definitions", "runs", "approvals", "signal", "publish", "subscribe"),
    "Run Apex": ("orchestrator", "timers", "worker", "projections", "gateway", "triggers"),
    "Develop and audit": ("dev", "demo", "audit", "bench"),
}


def _group_in_panels() -> None:
    """Show the commands in --help by what they are for (a command's own panel wins)."""
    panel_of = {name: panel for panel, names in _PANELS.items() for name in names}
    infos: list[Any] = [*app.registered_groups, *app.registered_commands]
    for info in infos:
        name = info.name or getattr(info.callback, "__name__", "")
        if name in panel_of and not info.rich_help_panel:
            info.rich_help_panel = panel_of[name]


_register_groups()


def main() -> None:
    """Entry point of the ``apex`` script."""
    app()
