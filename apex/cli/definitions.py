"""``apex definitions``: register workflow definitions and see what is registered.

Definitions live on the compacted ``apex.definitions`` topic, keyed
``name@version``; the orchestrator reads them from there. Files are YAML or
JSON in the format of ``schemas/definition.schema.json`` (see
``examples/ticket_triage.yaml``).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from apex.cli._apex import JsonOption, echo_json, fail, with_client
from apex.cli._console import console

app = typer.Typer(
    help="Workflow definitions: register YAML/JSON files, list them, show one.",
    no_args_is_help=True,
)


class Format(StrEnum):
    yaml = "yaml"
    json = "json"


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="definitions")


@app.command("register")
def register_files(
    files: Annotated[
        list[Path],
        typer.Argument(help="Definition files (.yaml, .yml or .json).", show_default=False),
    ],
    as_json: JsonOption = False,
) -> None:
    """Validate every file, then register them all (nothing is registered if one is invalid).

    Each problem is printed with its file and step. Registering the same
    name@version again replaces it for runs started afterwards; runs already
    started keep the version they started on.
    """
    from apex.definition_files import load_definition
    from apex.domain.errors import DefinitionError

    definitions = []
    problems = []
    for path in files:
        try:
            definitions.append(load_definition(path))
        except DefinitionError as exc:
            problems.append(str(exc))
        except FileNotFoundError:
            problems.append(f"{path}: no such file")
    if problems:
        fail("apex definitions register: nothing registered", "\n".join(problems))

    async def action(client: Any) -> list[str]:
        return [await client.register(d) for d in definitions]

    keys = with_client(action, what="apex definitions register")
    if as_json:
        echo_json({"registered": keys})
        return
    for key in keys:
        console.print(f"[green]registered[/] [bold]{escape(key)}[/]")


@app.command("list")
def list_definitions(as_json: JsonOption = False) -> None:
    """Every registered version of every definition."""

    async def action(client: Any) -> list[Any]:
        return list(await client.definitions())

    definitions = with_client(action, what="apex definitions list")
    if as_json:
        echo_json(
            [
                {
                    "key": d.key,
                    "name": d.name,
                    "version": d.version,
                    "description": d.description,
                    "steps": [s.id for s in d.steps],
                    "capabilities": sorted({s.capability for s in d.steps}),
                }
                for d in definitions
            ]
        )
        return
    if not definitions:
        console.print("No definitions registered yet: [bold]apex definitions register FILE[/]")
        return
    table = Table(title="Workflow definitions")
    for column in ("name", "version", "steps", "capabilities", "description"):
        table.add_column(column, overflow="fold")
    for d in definitions:
        table.add_row(
            escape(d.name),
            str(d.version),
            escape(" → ".join(s.id for s in d.steps)),
            escape(", ".join(sorted({s.capability for s in d.steps}))),
            escape(d.description),
        )
    console.print(table)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="The definition's name.", show_default=False)],
    version: Annotated[
        int | None, typer.Option(help="Which version (default: the latest).", min=1)
    ] = None,
    format: Annotated[Format, typer.Option(help="Output format of the definition.")] = Format.yaml,
    as_json: JsonOption = False,
) -> None:
    """Print one definition in its canonical form (what `register` accepts back)."""
    from apex.definition_files import dump_definition

    async def action(client: Any) -> Any:
        return await client.get_definition(name, version)

    definition = with_client(action, what="apex definitions show")
    if definition is None:
        which = name if version is None else f"{name}@{version}"
        fail("apex definitions show", f"no definition {which} is registered")
    if as_json or format is Format.json:
        text = dump_definition(definition, "json")
        if as_json:
            typer.echo(text, nl=False)
            return
        console.print(Syntax(text, "json"))
        return
    console.print(Syntax(dump_definition(definition, "yaml"), "yaml"))
