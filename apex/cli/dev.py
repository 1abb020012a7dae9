"""``apex dev``: the local stack (Kafka + PostgreSQL) without Docker."""

from __future__ import annotations

import asyncio
import json
from enum import StrEnum
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from apex import devstack
from apex.cli._console import console, print_error
from apex.config import REPO_ROOT, Settings, settings_markdown, settings_table
from apex.devstack import ServiceStatus, StackError
from apex.devstack.process import tail

app = typer.Typer(
    help="Run the local stack: real Kafka (KRaft) and PostgreSQL on 127.0.0.1, no Docker.",
    no_args_is_help=True,
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="dev")


class ServiceName(StrEnum):
    kafka = "kafka"
    postgres = "postgres"


@app.command()
def up() -> None:
    """Start Kafka and PostgreSQL if they are not running; wait until both answer."""
    settings = Settings.from_env()
    with console.status("Starting the local stack (the first start resolves Kafka with Maven)"):
        try:
            report = asyncio.run(devstack.up(settings))
        except StackError as exc:
            print_error("apex dev up failed", str(exc))
            raise typer.Exit(1) from None
    console.print(_status_table(report, title="Local stack is up", took=True))
    for svc in report:
        console.print(f"[dim]{svc.name} log: {svc.log_file}[/]", highlight=False)


@app.command()
def down(
    timeout: Annotated[float, typer.Option(help="Seconds to wait before SIGKILL.")] = 30.0,
) -> None:
    """Stop the services `apex dev up` started (only the pids in its pid files)."""
    settings = Settings.from_env()
    try:
        outcomes = asyncio.run(devstack.down(settings, timeout))
    except StackError as exc:
        print_error("apex dev down failed", str(exc))
        raise typer.Exit(1) from None
    for name, outcome in outcomes:
        console.print(f"{name}: {outcome}", highlight=False)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show whether Kafka and PostgreSQL answer; exit 1 when either does not."""
    report = asyncio.run(devstack.status(Settings.from_env()))
    if as_json:
        typer.echo(json.dumps([s.as_json() for s in report], indent=2))
    else:
        console.print(_status_table(report, title="Local stack"))
    if not all(s.answering for s in report):
        raise typer.Exit(1)


@app.command()
def logs(
    service: Annotated[
        ServiceName | None, typer.Argument(help="Only this service (default: both).")
    ] = None,
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many lines.")] = 40,
) -> None:
    """Print the last lines of the services' logs."""
    settings = Settings.from_env()
    names = [service.value] if service else [s.value for s in ServiceName]
    for name in names:
        svc = devstack.service(settings, name)
        console.rule(f"{name}: {svc.log_file}")
        text = tail(svc.log_file, lines)
        typer.echo(text or "(no log yet)")  # verbatim: no wrapping, no markup


@app.command("settings")
def show_settings(
    markdown: Annotated[bool, typer.Option(help="Print the Markdown table.")] = False,
    readme: Annotated[
        bool, typer.Option(help="Rewrite the settings table in README.md (between its markers).")
    ] = False,
) -> None:
    """Print every setting: environment variable, default and what it does."""
    if readme:
        path = REPO_ROOT / "README.md"
        path.write_text(replace_settings_block(path.read_text(), settings_markdown()))
        console.print(f"Settings table written to {path}", highlight=False)
        return
    if markdown:
        typer.echo(settings_markdown(), nl=False)
        return
    table = Table(title="Apex settings (environment variables)")
    table.add_column("Variable", style="bold", no_wrap=True)
    table.add_column("Default")
    table.add_column("What it does")
    for env, default, doc in settings_table():
        table.add_row(env, escape(default) or '""', escape(doc))
    console.print(table)


README_BEGIN = "<!-- settings-table:begin (apex dev settings --readme) -->"
README_END = "<!-- settings-table:end -->"


def replace_settings_block(readme: str, table: str) -> str:
    """``readme`` with the text between the settings markers replaced by ``table``."""
    head, begin, rest = readme.partition(README_BEGIN)
    _, end, tail_ = rest.partition(README_END)
    if not begin or not end:
        raise typer.BadParameter(f"README.md lacks the markers {README_BEGIN} ... {README_END}")
    return f"{head}{README_BEGIN}\n{table}{README_END}{tail_}"


def _status_table(report: list[ServiceStatus], *, title: str, took: bool = False) -> Table:
    table = Table(title=title)
    for column in ("Service", "Listens on", "State", "Pid", "Version", "Answers"):
        table.add_column(column, no_wrap=column != "Answers")
    if took:
        table.add_column("Ready in", justify="right")
    for svc in report:
        row = [
            svc.name,
            svc.address,
            svc.state,
            str(svc.pid or "-"),
            svc.version or "-",
            "[green]yes[/]" if svc.answering else f"[red]no[/]: {escape(svc.detail)}",
        ]
        if took:
            row.append(f"{svc.seconds:.1f} s" if svc.seconds is not None else "-")
        table.add_row(*row)
    return table
