"""``apex signal``, ``apex publish``, ``apex subscribe``: messages in and results out.

* ``apex signal RUN NAME`` wakes a step waiting for the named signal.
* ``apex publish TOPIC FILE`` puts business events on an upstream topic, for
  trigger rules (``apex triggers``) to turn into runs and signals.
* ``apex subscribe`` tails ``apex.results``: from now, or from a point in
  time; each invocation is an independent reader (no consumer group), so it
  never takes results away from anyone.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from apex.cli._apex import (
    JsonOption,
    echo_json,
    fail,
    json_argument,
    parse_time,
    shown_json,
    styled,
    with_client,
)
from apex.cli._console import console


class Kind(StrEnum):
    run = "run"
    step = "step"
    any = "any"


def register(root: typer.Typer) -> None:
    root.command("signal")(signal)
    root.command("publish")(publish)
    root.command("subscribe")(subscribe)


def signal(
    run_id: Annotated[str, typer.Argument(help="The run's id.", show_default=False)],
    name: Annotated[str, typer.Argument(help="The signal's name.", show_default=False)],
    payload: Annotated[
        str | None, typer.Option("--payload", "-p", help="Payload as JSON text.")
    ] = None,
    payload_file: Annotated[
        Path | None, typer.Option("--payload-file", help="Payload from a JSON file ('-': stdin).")
    ] = None,
    correlation_key: Annotated[
        str | None, typer.Option(help="The business key the signal is about, if any.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Send a named signal (with an optional JSON payload) to a run."""
    value = json_argument(payload, payload_file, what="payload")

    async def action(client: Any) -> str:
        command_id: str = await client.signal(run_id, name, value, correlation_key)
        return command_id

    command_id = with_client(action, what="apex signal")
    if as_json:
        echo_json({"run_id": run_id, "command": "SendSignal", "command_id": command_id})
    else:
        console.print(f"signal [bold]{escape(name)}[/] sent to run {escape(run_id)}")


def publish(
    topic: Annotated[
        str,
        typer.Argument(help="The upstream topic, as named (no Apex prefix).", show_default=False),
    ],
    file: Annotated[
        Path, typer.Argument(help="The event: a JSON file, or '-' for stdin.", show_default=False)
    ],
    key: Annotated[
        str | None, typer.Option("--key", "-k", help="Record key (e.g. the business id).")
    ] = None,
    lines: Annotated[
        bool, typer.Option("--lines", help="FILE is JSON Lines: publish one event per line.")
    ] = False,
    raw: Annotated[
        bool, typer.Option("--raw", help="Publish FILE's bytes unchanged (e.g. Avro).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Publish business events from FILE on an upstream TOPIC (for trigger rules).

    The topic must exist; Apex's own topics are refused (commands have their
    own commands).
    """
    try:
        data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as exc:
        fail("apex publish: cannot read the file", str(exc))
    events: list[Any] = [data] if raw else _json_events(data, lines, str(file))

    async def action(client: Any) -> list[Any]:
        return [await client.publish(topic, event, key=key) for event in events]

    published = with_client(action, what="apex publish")
    if as_json:
        for p in published:
            echo_json({"topic": p.topic, "partition": p.partition, "offset": p.offset})
        return
    where = ", ".join(f"{p.partition}@{p.offset}" for p in published[:10])
    more = " …" if len(published) > 10 else ""
    console.print(
        f"published {len(published)} event(s) on [bold]{escape(topic)}[/] ({where}{more})"
    )


def subscribe(
    definition: Annotated[
        str | None, typer.Option("--definition", "-d", help="A name, or name@version.")
    ] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run's results.")] = None,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", "-s", help="Only these statuses (repeat the option)."),
    ] = None,
    kind: Annotated[Kind, typer.Option(help="Run results, step results, or both.")] = Kind.any,
    since: Annotated[
        str | None,
        typer.Option(help="From this time: ISO 8601, or an age (15m, 2h, 1d). Default: now."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="Stop after this many.")
    ] = None,
    idle_timeout: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds without a result (default: never)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Tail results as they are published (Ctrl-C to stop); --json for one JSON line each."""
    start = parse_time(since, "--since")

    async def action(client: Any) -> int:
        count = 0
        subscription = client.subscribe(
            definition=definition,
            run_id=run_id,
            status=status or None,
            kind=kind.value,
            from_time=start,
            idle_timeout_s=idle_timeout,
            limit=limit,
        )
        async with subscription:
            if not as_json:
                frm = "now" if start is None else start.isoformat()
                console.print(f"[dim]subscribed to results from {frm}[/]")
            async for result in subscription:
                count += 1
                _print_result(result, as_json)
        return count

    try:
        with_client(action, what="apex subscribe")
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# -- helpers ----------------------------------------------------------------------------------


def _json_events(data: bytes, lines: bool, source: str) -> list[Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        fail("apex publish: the file is not UTF-8 JSON", f"{source}: use --raw for binary events")
    chunks = [ln for ln in text.splitlines() if ln.strip()] if lines else [text]
    events = []
    for number, chunk in enumerate(chunks, start=1):
        try:
            events.append(json.loads(chunk))
        except ValueError as exc:
            where = f"{source} line {number}" if lines else source
            fail("apex publish: not JSON", f"{where}: {exc}", code=2)
    if not events:
        fail("apex publish: nothing to publish", f"{source} holds no event", code=2)
    return events


def _print_result(result: Any, as_json: bool) -> None:
    from dataclasses import asdict

    from apex.domain.messages import RunResult

    kind = "run" if isinstance(result, RunResult) else "step"
    if as_json:
        echo_json({"type": kind, **asdict(result)})
        return
    if kind == "run":
        tail = result.error or shown_json(result.outputs)
        console.print(
            f"run  {escape(result.run_id)} {escape(result.definition)} "
            f"{styled(result.status)} {escape(tail)}"
        )
    else:
        tail = result.error or shown_json(result.output)
        console.print(
            f"step {escape(result.run_id)} {escape(result.definition)} "
            f"{escape(result.step_id)} {styled(result.status)} {escape(tail)}"
        )
