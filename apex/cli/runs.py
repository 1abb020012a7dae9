"""``apex runs``: start, inspect, follow and cancel workflow runs.

``start`` and ``cancel`` publish commands (the orchestrator decides them);
``get``, ``list`` and ``watch`` read the PostgreSQL read models, which follow
the log within the projection lag (``apex projections status``). ``start
--wait`` waits for the run's result on the results topic instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from apex.cli._apex import (
    JsonOption,
    echo_json,
    fail,
    json_argument,
    parse_time,
    shown_json,
    shown_time,
    styled,
    with_client,
)
from apex.cli._console import console

app = typer.Typer(
    help="Workflow runs: start one, get or list them, watch one live, cancel one.",
    no_args_is_help=True,
)

RunIdArgument = Annotated[str, typer.Argument(help="The run's id.", show_default=False)]


class Status(StrEnum):
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="runs")


@app.command()
def start(
    definition: Annotated[
        str, typer.Argument(help="Name of a registered definition.", show_default=False)
    ],
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="The run input as JSON text.")
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input-file", help="The run input from a JSON file ('-': stdin)."),
    ] = None,
    version: Annotated[
        int | None, typer.Option(help="Definition version (default: the latest).", min=1)
    ] = None,
    idempotency_key: Annotated[
        str, typer.Option("--key", "-k", help="Idempotency key: asking twice starts one run.")
    ] = "",
    correlation_id: Annotated[str, typer.Option(help="Correlation id of the business flow.")] = "",
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Wait for the run's result.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.", min=0.1)] = 300.0,
    as_json: JsonOption = False,
) -> None:
    """Start a run and print its id; with --wait, its result (exit 1 unless it completed)."""
    payload = json_argument(input, input_file, what="input", default={})

    async def action(client: Any) -> tuple[str, Any]:
        run_id = await client.start_run(
            definition,
            payload,
            version=version,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )
        if not wait:
            return run_id, None
        if not as_json:
            console.print(f"started run [bold]{run_id}[/]; waiting for its result…")
        return run_id, (await client.wait([run_id], timeout_s=timeout))[run_id]

    run_id, result = with_client(action, what="apex runs start")
    if result is None:
        if as_json:
            echo_json({"run_id": run_id})
        else:
            console.print(f"started run [bold]{run_id}[/]")
        return
    if as_json:
        echo_json({"run_id": run_id, "status": result.status, "outputs": result.outputs,
                   "error": result.error})  # fmt: skip
    else:
        console.print(f"run [bold]{run_id}[/] {styled(result.status)}")
        if result.error:
            console.print(f"error: {escape(result.error)}")
        console.print(f"outputs: {escape(shown_json(result.outputs, 400))}")
    if result.status != "completed":
        raise typer.Exit(1)


@app.command()
def get(run_id: RunIdArgument, as_json: JsonOption = False) -> None:
    """A run with its steps and approvals (exit 1 when the read models do not have it)."""
    run = with_client(lambda c: c.get_run(run_id), what="apex runs get")
    if run is None:
        fail("apex runs get", _not_found(run_id))
    if as_json:
        echo_json(run.to_dict())
        return
    console.print(_run_view(run))


@app.command("list")
def list_runs(
    definition: Annotated[
        str | None, typer.Option("--definition", "-d", help="A name, or name@version.")
    ] = None,
    status: Annotated[
        Status | None, typer.Option("--status", "-s", help="Only this status.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Started at or after: ISO 8601, or an age (15m, 2h, 1d).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=500)] = 20,
    cursor: Annotated[
        str | None, typer.Option(help="Next page: the cursor the previous page printed.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Runs, newest first, a page at a time."""
    started = parse_time(since, "--since")

    async def action(client: Any) -> Any:
        return await client.list_runs(
            definition=definition,
            status=None if status is None else status.value,
            since=started,
            limit=limit,
            cursor=cursor,
        )

    page = with_client(action, what="apex runs list")
    if as_json:
        echo_json(page.to_dict())
        return
    if not page.runs:
        console.print("No runs match.")
        return
    table = Table(title="Runs (newest first)")
    for column in ("run id", "definition", "status", "started", "finished", "error"):
        table.add_column(column, overflow="fold")
    for run in page.runs:
        table.add_row(
            escape(run.run_id),
            escape(run.definition),
            styled(run.status),
            shown_time(run.started_at),
            shown_time(run.finished_at),
            escape(run.error or ""),
        )
    console.print(table)
    if page.next_cursor:
        console.print(f"more: [bold]apex runs list --cursor {page.next_cursor}[/] (same filters)")


@app.command()
def watch(
    run_id: RunIdArgument,
    interval: Annotated[float, typer.Option(help="Seconds between looks.", min=0.1)] = 0.5,
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds (default: never).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Follow a run's steps live until it ends; exit 0 if it completed, 1 otherwise.

    With --json, one line per change: the run's status and each step's status.
    """

    async def action(client: Any) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Any = None
        live = Live(_waiting(run_id), console=console, refresh_per_second=8)
        with contextlib.nullcontext() if as_json else live:
            while True:
                run = await client.get_run(run_id)
                if run is not None:
                    snapshot = (run.status, [(s.step_id, s.status, s.attempt) for s in run.steps])
                    if snapshot != last:
                        last = snapshot
                        if as_json:
                            echo_json(run.to_dict())
                        else:
                            live.update(_run_view(run))
                    if run.finished:
                        return run
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"run {run_id} did not finish within {timeout}s"
                        + ("" if run is not None else f"; {_not_found(run_id)}")
                    )
                await asyncio.sleep(interval)

    run = with_client(action, what="apex runs watch")
    if run.status != "completed":
        raise typer.Exit(1)


@app.command()
def cancel(
    run_id: RunIdArgument,
    reason: Annotated[str, typer.Option(help="Why: recorded on the RunCancelled event.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Cancel a run: running steps are abandoned and nothing new is dispatched."""

    async def action(client: Any) -> str:
        run = await client.get_run(run_id)
        if run is not None and run.finished:
            raise ValueError(f"run {run_id} is {run.status} already: nothing to cancel")
        command_id: str = await client.cancel(run_id, reason=reason)
        return command_id

    command_id = with_client(action, what="apex runs cancel")
    if as_json:
        echo_json({"run_id": run_id, "command": "CancelRun", "command_id": command_id})
    else:
        console.print(f"cancel of run [bold]{run_id}[/] sent")


# -- views -------------------------------------------------------------------------------------


def _not_found(run_id: str) -> str:
    return (
        f"run {run_id} is not in the read models: unknown, or not projected yet "
        "(is the projector running? `apex projections status`)"
    )


def _waiting(run_id: str) -> Panel:
    return Panel(f"waiting for run {escape(run_id)} to appear in the read models…")


def _run_view(run: Any) -> Group:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column(overflow="fold")
    head.add_row("run", escape(run.run_id))
    head.add_row("definition", escape(run.definition))
    head.add_row("status", styled(run.status))
    head.add_row("started", shown_time(run.started_at))
    if run.finished_at:
        head.add_row("finished", shown_time(run.finished_at))
    head.add_row("input", escape(shown_json(run.input, 200)))
    if run.finished:
        head.add_row("outputs", escape(shown_json(run.outputs, 200)))
    if run.error:
        head.add_row("error", f"[red]{escape(run.error)}[/]")
    steps = Table(title="steps", title_justify="left")
    for column in ("step", "status", "attempt", "started", "finished", "output / error"):
        steps.add_column(column, overflow="fold")
    for step in run.steps:
        steps.add_row(
            escape(step.step_id),
            styled(step.status),
            str(step.attempt),
            shown_time(step.started_at),
            shown_time(step.finished_at),
            escape(step.error or ("" if step.output is None else shown_json(step.output))),
        )
    parts: list[Any] = [Panel(head, title="Apex run", expand=False), steps]
    if run.approvals:
        approvals = Table(title="approvals", title_justify="left")
        for column in ("step", "when", "status", "requested", "deadline", "by", "note"):
            approvals.add_column(column, overflow="fold")
        for a in run.approvals:
            approvals.add_row(
                escape(a.step_id),
                a.when,
                styled(a.status),
                shown_time(a.requested_at),
                shown_time(a.deadline_at),
                escape(a.decided_by or ""),
                escape(a.note or ""),
            )
        parts.append(approvals)
    return Group(*parts)
