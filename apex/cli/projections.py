"""``apex projections``: the PostgreSQL read models.

``migrate`` brings the schema to the newest revision; ``run`` is the projector
(apex.events into the read models, until SIGTERM); ``rebuild`` replays the log
into a fresh schema and swaps it in atomically; ``status`` shows how far the
projection is behind the log.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from apex.cli._console import console, print_error
from apex.config import Settings

app = typer.Typer(
    help="PostgreSQL read models: migrate, run the projector, rebuild from the log.",
    no_args_is_help=True,
)

T = TypeVar("T")

SchemaOption = Annotated[
    str | None,
    typer.Option("--schema", help="Read-model schema (default: APEX_READ_MODEL_SCHEMA)."),
]


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="projections")


@app.command()
def migrate(schema: SchemaOption = None) -> None:
    """Create the read-model schema if needed and upgrade it to the newest revision."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from apex.projections.migrate import migrate as run_migrations

    settings = Settings.from_env()
    target = schema or settings.read_model_schema

    async def main() -> str:
        engine = create_async_engine(settings.sqlalchemy_url)
        try:
            return await run_migrations(engine, target)
        finally:
            await engine.dispose()

    revision = _run(main())
    console.print(f"read-model schema [bold]{target}[/] is at revision [bold]{revision}[/]")


@app.command()
def run(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at debug level.")] = False,
) -> None:
    """Run the projector until SIGTERM or Ctrl-C (start several: one consumer group).

    Each batch of a partition is one PostgreSQL transaction that writes the rows
    and moves the partition's checkpoint; on start it resumes from the checkpoints.
    """
    from apex.cli.streams import _serve
    from streams.projector import Projector

    _serve(Projector(Settings.from_env()), verbose)


@app.command()
def rebuild(
    schema: SchemaOption = None,
    keep_old: Annotated[
        bool, typer.Option("--keep-old", help="Keep the replaced schema as <schema>_old_<time>.")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(help="Processes to fold partitions in (default: APEX_REBUILD_WORKERS)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Replay apex.events into a fresh schema, then swap it in for readers in one transaction.

    A running projector carries on from the rebuilt checkpoints by itself.
    """
    from sqlalchemy.ext.asyncio import create_async_engine

    from apex.projections.rebuild import RebuildReport
    from apex.projections.rebuild import rebuild as run_rebuild

    settings = Settings.from_env()

    async def main() -> RebuildReport:
        engine = create_async_engine(settings.sqlalchemy_url)
        try:
            with Progress(
                TextColumn("[bold]rebuilding[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("records"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                disable=as_json,
            ) as progress:
                task = progress.add_task(schema or settings.read_model_schema, total=None)

                def update(done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total)

                return await run_rebuild(
                    settings,
                    engine,
                    schema=schema,
                    on_progress=update,
                    keep_old=keep_old,
                    workers=workers,
                )
        finally:
            await engine.dispose()

    report = _run(main())
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "schema": report.schema,
                    "built_as": report.built_as,
                    "events": report.events,
                    "runs": report.runs,
                    "skipped": report.skipped,
                    "seconds": round(report.seconds, 3),
                    "events_per_s": round(report.events_per_s),
                    "end_offsets": report.end_offsets,
                }
            )
        )
        return
    console.print(
        f"[green]rebuilt[/] [bold]{report.schema}[/]: {report.events:,} events, "
        f"{report.runs:,} runs in {report.seconds:.1f} s ({report.events_per_s:,.0f} events/s)"
        + (
            f", [yellow]{report.skipped} undecodable or unfoldable skipped[/]"
            if report.skipped
            else ""
        )
    )


@app.command()
def status(
    schema: SchemaOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per partition: the checkpoint, the log's end and the lag between them."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from apex.kafka.event_log import EventLogReader
    from apex.projections.store import read_checkpoints

    settings = Settings.from_env()
    target = schema or settings.read_model_schema
    topic = settings.topic("events")

    async def main() -> tuple[dict[tuple[str, int], int], dict[int, int]]:
        engine = create_async_engine(settings.sqlalchemy_url)
        try:
            async with engine.connect() as connection:
                checkpoints = await read_checkpoints(connection, target)
        finally:
            await engine.dispose()
        async with EventLogReader(settings) as log:
            ends = await log.end_offsets(topic)
        return checkpoints, ends

    checkpoints, ends = _run(main())
    rows = [
        (p, checkpoints.get((topic, p), 0), end, end - checkpoints.get((topic, p), 0))
        for p, end in sorted(ends.items())
    ]
    if as_json:
        for p, checkpoint, end, lag in rows:
            typer.echo(
                json.dumps(
                    {
                        "topic": topic,
                        "partition": p,
                        "checkpoint": checkpoint,
                        "end": end,
                        "lag": lag,
                    }
                )
            )
        return
    table = Table(title=f"{target}: projection of {topic}")
    for column in ("partition", "checkpoint", "log end", "lag"):
        table.add_column(column, justify="right")
    for p, checkpoint, end, lag in rows:
        table.add_row(str(p), f"{checkpoint:,}", f"{end:,}", f"{lag:,}")
    console.print(table)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except Exception as exc:
        print_error(f"apex projections: {type(exc).__name__}", str(exc))
        raise typer.Exit(1) from exc
