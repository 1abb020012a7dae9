"""``apex audit``: a run's history from the log, its state at any point, archives, proofs.

``history RUN`` prints the run's events read from Kafka at the offsets the
event index names; ``state RUN --at-seq N | --at-time T`` folds them up to a
point; ``export --from T1 --to T2 -o FILE.avro`` archives a time range as an
Avro Object Container File; ``verify [RUN]`` checks the hash chains and every
read-model row against the log, printing each difference (exit 1 on any).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from apex.cli._console import console, print_error
from apex.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

app = typer.Typer(
    help="Audit: a run's history and state from the log, Avro archives, tamper checks.",
    no_args_is_help=True,
)

RunArgument = Annotated[str, typer.Argument(help="Run id.", show_default=False)]
SchemaOption = Annotated[
    str | None,
    typer.Option("--schema", help="Read-model schema (default: APEX_READ_MODEL_SCHEMA)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (lines) instead of tables.")]


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="audit")


@app.command()
def history(
    run_id: RunArgument,
    schema: SchemaOption = None,
    as_json: JsonOption = False,
    gap: Annotated[
        int | None,
        typer.Option(help="Records read through rather than seeked over (APEX_AUDIT_SEEK_GAP)."),
    ] = None,
) -> None:
    """The run's events, in order, read from Kafka where the event index says they are."""
    from apex.audit.history import RunHistory, event_fields, run_history

    settings = Settings.from_env()

    async def main() -> RunHistory:
        return await _with_engine(
            settings, lambda engine: run_history(settings, engine, run_id, schema=schema, gap=gap)
        )

    result = _run(main())
    if as_json:
        for logged in result.events:
            e = logged.event
            typer.echo(
                json.dumps(
                    {
                        "run_id": e.run_id,
                        "seq": e.seq,
                        "type": type(e).__name__,
                        "occurred_at": _iso(e.occurred_at_ms),
                        "topic": logged.topic,
                        "partition": logged.partition,
                        "offset": logged.offset,
                        "timestamp_ms": logged.timestamp_ms,
                        "chain": None if logged.chain is None else logged.chain.hex(),
                        "event": event_fields(e),
                    },
                    sort_keys=True,
                )
            )
        return
    table = Table(title=f"run {run_id}: {len(result.events)} events")
    for column, justify in (
        ("seq", "right"),
        ("type", "left"),
        ("occurred at (UTC)", "left"),
        ("partition@offset", "right"),
        ("chain", "left"),
        ("details", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for logged in result.events:
        e = logged.event
        fields = event_fields(e)
        fields.pop("causation_id", None)
        fields.pop("correlation_id", None)
        if "definition" in fields:
            fields["definition"] = (
                f"{fields['definition'].get('name')}@{fields['definition'].get('version')}"
            )
        table.add_row(
            str(e.seq),
            type(e).__name__,
            _iso(e.occurred_at_ms),
            f"{logged.partition}@{logged.offset}",
            "-" if logged.chain is None else logged.chain.hex()[:12],
            escape(_short(json.dumps(fields, sort_keys=True), 100)),
        )
    console.print(table)
    console.print(
        f"[dim]{result.records_read} records read from Kafka in {result.fetches} fetches[/]"
    )


@app.command()
def state(
    run_id: RunArgument,
    at_seq: Annotated[int | None, typer.Option("--at-seq", help="State after this event.")] = None,
    at_time: Annotated[
        str | None,
        typer.Option("--at-time", help="State at this time (ISO 8601; UTC when no offset)."),
    ] = None,
    schema: SchemaOption = None,
    as_json: JsonOption = False,
) -> None:
    """The run's state after event N, or at a time: a fold of its events up to there."""
    from apex.audit.history import RunHistory, run_history
    from apex.audit.state import prefix, state_to_dict
    from apex.domain.state import fold

    if at_seq is not None and at_time is not None:
        print_error("apex audit state", "give --at-seq or --at-time, not both")
        raise typer.Exit(2)
    moment = _parse_time(at_time, "--at-time") if at_time is not None else None
    settings = Settings.from_env()

    async def main() -> RunHistory:
        return await _with_engine(
            settings, lambda engine: run_history(settings, engine, run_id, schema=schema)
        )

    result = _run(main())
    events = prefix([logged.event for logged in result.events], at_seq=at_seq, at_time=moment)
    folded = fold(events)
    if folded is None:
        print_error("apex audit state", f"run {run_id} had not started by then (no event yet)")
        raise typer.Exit(1)
    data = state_to_dict(folded)
    if as_json:
        typer.echo(json.dumps(data, sort_keys=True, indent=2))
        return
    summary = Table(title=f"run {run_id} after seq {folded.seq}", show_header=False)
    summary.add_column("field", style="bold")
    summary.add_column("value")
    for key in ("definition", "status", "seq", "started_at", "finished_at", "error"):
        summary.add_row(key, escape(str(data[key])))
    summary.add_row("input", escape(_short(json.dumps(data["input"]), 120)))
    summary.add_row("outputs", escape(_short(json.dumps(data["outputs"]), 120)))
    console.print(summary)
    steps = Table(title="steps")
    for column in ("step", "status", "attempt", "output", "error"):
        steps.add_column(column)
    for sid, st in data["steps"].items():
        steps.add_row(
            sid,
            st["status"],
            str(st["attempt"]),
            escape(_short(json.dumps(st["output"]), 60)),
            escape(str(st["error"] or "")),
        )
    console.print(steps)
    if data["timers"]:
        timers = Table(title="pending timers")
        for column in ("timer", "purpose", "fires at", "step"):
            timers.add_column(column)
        for tid, t in data["timers"].items():
            timers.add_row(tid, t["purpose"], str(t["fire_at"]), str(t["step_id"] or ""))
        console.print(timers)


@app.command()
def export(
    start: Annotated[str, typer.Option("--from", help="Start (ISO 8601, inclusive).")],
    end: Annotated[str, typer.Option("--to", help="End (ISO 8601, exclusive).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .avro file to write.")],
    schema: SchemaOption = None,
) -> None:
    """Events that occurred in [FROM, TO) to an Avro Object Container File (schema embedded)."""
    from apex.audit.export import ExportReport, export_events

    settings = Settings.from_env()
    t1, t2 = _parse_time(start, "--from"), _parse_time(end, "--to")

    async def main() -> ExportReport:
        return await _with_engine(
            settings, lambda engine: export_events(settings, engine, t1, t2, output, schema=schema)
        )

    report = _run(main())
    console.print(f"[green]exported[/] {report.events:,} events to [bold]{report.path}[/]")


@app.command()
def verify(
    run_id: Annotated[str | None, typer.Argument(help="Only this run.", show_default=False)] = None,
    topic: Annotated[
        str | None,
        typer.Option("--topic", help="Events topic to check (default: APEX_TOPIC_PREFIX+events)."),
    ] = None,
    schema: SchemaOption = None,
    chains_only: Annotated[
        bool, typer.Option("--chains-only", help="Check the hash chains, not the read models.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check every hash chain and every read-model row against the log; exit 1 on any difference."""
    from apex.audit.verify import VerifyReport
    from apex.audit.verify import verify as run_verify

    settings = Settings.from_env()

    async def main() -> VerifyReport:
        return await _with_engine(
            settings,
            lambda engine: run_verify(
                settings,
                engine,
                run_id=run_id,
                topic=topic,
                schema=schema,
                check_rows=not chains_only,
            ),
        )

    report = _run(main())
    if as_json:
        for d in report.differences:
            typer.echo(
                json.dumps(
                    {"kind": d.kind, "run_id": d.run_id, "where": d.where, "detail": d.detail}
                )
            )
    else:
        for d in report.differences:
            console.print(f"[red]{d.kind}[/] " + escape(str(d).split("] ", 1)[1]))
        verdict = "[green]OK[/]" if report.ok else f"[red]{len(report.differences)} differences[/]"
        console.print(
            f"{verdict}: {report.events:,} events of {report.topic}, {report.runs:,} runs, "
            f"{report.rows:,} read-model rows of {report.schema}"
            + ("" if not chains_only else " (chains only)")
        )
    if not report.ok:
        raise typer.Exit(1)


# -- helpers ------------------------------------------------------------------------------------


async def _with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(settings.sqlalchemy_url)
    try:
        return await work(engine)
    finally:
        await engine.dispose()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except Exception as exc:
        print_error(f"apex audit: {type(exc).__name__}", str(exc))
        raise typer.Exit(1) from exc


def _parse_time(value: str, option: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        print_error(
            "apex audit", f"{option} {value!r} is not an ISO 8601 time (e.g. 2025-01-31T12:00:00Z)"
        )
        raise typer.Exit(2) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _iso(ms: int) -> str:
    from apex.projections.rows import from_ms

    moment = from_ms(ms)
    assert moment is not None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
