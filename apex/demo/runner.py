"""``apex demo``: support-ticket triage, end to end on the real stack.

Brings the stack up if needed, starts an orchestrator, the timer service and two
worker processes, registers ``examples/ticket_triage.yaml``, submits a batch of
tickets, shows live progress, approves every high-priority route that waits for
a human, prints each run's result from ``apex.results``, and succeeds only when
every run ended with the queue and priority its ticket calls for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from apex import codec, devstack
from apex.client import ApexClient
from apex.config import REPO_ROOT, Settings
from apex.definition_files import load_definition
from apex.demo.tickets import expected_outcome, tickets
from apex.domain import events as ev
from apex.domain.messages import RunResult, StepResult
from apex.kafka.clients import make_consumer, topic_partitions

DEFINITION_FILE = REPO_ROOT / "examples" / "ticket_triage.yaml"


@dataclass
class DemoOutcome:
    expected: dict[str, dict[str, Any]]
    results: dict[str, RunResult] = field(default_factory=dict)
    approvals: int = 0
    retries: int = 0
    steps_done: int = 0

    def mismatches(self) -> list[str]:
        problems = []
        for run_id, want in self.expected.items():
            got = self.results.get(run_id)
            if got is None:
                problems.append(f"run {run_id}: no result")
            elif got.status != "completed":
                problems.append(f"run {run_id}: {got.status}: {got.error}")
            else:
                outputs = got.outputs or {}
                seen = {"queue": outputs.get("queue"), "priority": outputs.get("priority")}
                if seen != want:
                    problems.append(f"run {run_id}: expected {want}, got {seen}")
        return problems


async def run_demo(
    settings: Settings,
    *,
    count: int = 21,
    workers: int = 2,
    timeout_s: float = 180.0,
    console: Console | None = None,
) -> DemoOutcome:
    console = console or Console(quiet=True)
    await devstack.ensure_stack(settings)
    definition = load_definition(DEFINITION_FILE)
    processes = _start_processes(settings, workers)
    try:
        async with ApexClient(settings) as client:
            await client.register(definition)
            watcher = _Watcher(settings)
            await watcher.start()  # from the current end: only this batch's runs
            batch = uuid.uuid4().hex[:8]
            outcome = DemoOutcome(expected={})
            tickets_by_run: dict[str, dict[str, Any]] = {}
            for ticket in tickets(count):
                run_id = await client.start_run(
                    definition.name,
                    ticket,
                    idempotency_key=f"demo-{batch}-{ticket['ticket_id']}",
                )
                outcome.expected[run_id] = expected_outcome(ticket)
                tickets_by_run[run_id] = ticket
            console.print(
                f"Submitted [bold]{count}[/] tickets to [bold]{definition.key}[/] "
                f"(orchestrator, timers and {workers} workers running)"
            )
            await _follow(client, watcher, outcome, timeout_s, console, processes)
            await watcher.stop()
        _print_results(console, outcome, tickets_by_run)
        return outcome
    finally:
        _stop_processes(processes)


# -- processes ------------------------------------------------------------------------


def _start_processes(settings: Settings, workers: int) -> dict[str, subprocess.Popen[bytes]]:
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    commands = {"orchestrator": ["orchestrator"], "timers": ["timers"]}
    for n in range(1, workers + 1):
        commands[f"worker-{n}"] = ["worker", "apex.demo.agents:agents"]
    processes = {}
    for name, args in commands.items():
        log_file = (logs / f"demo-{name}.log").open("ab")
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "apex", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **settings.to_env(), "APEX_INSTANCE_ID": f"demo-{name}"},
            cwd=Path.cwd(),
        )
    return processes


def _stop_processes(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in processes.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for proc in processes.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- following the runs ------------------------------------------------------------------


class _Watcher:
    """Reads apex.events and apex.results from their current end."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer = make_consumer(settings)

    async def start(self) -> None:
        consumer = self._consumer
        await consumer.start()
        tps = []
        for name in ("events", "results"):
            tps += await topic_partitions(consumer, self._settings.topic(name))
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # pin "the end" before any run is submitted

    async def poll(self) -> list[tuple[str, bytes]]:
        batch = await self._consumer.getmany(timeout_ms=100)
        return [(r.topic, r.value) for records in batch.values() for r in records]

    async def stop(self) -> None:
        await self._consumer.stop()


async def _follow(
    client: ApexClient,
    watcher: _Watcher,
    outcome: DemoOutcome,
    timeout_s: float,
    console: Console,
    processes: dict[str, subprocess.Popen[bytes]],
) -> None:
    events_topic = client.settings.topic("events")
    states: Counter[str] = Counter()
    total_steps = len(outcome.expected) * 5
    deadline = time.monotonic() + timeout_s
    with Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        runs_bar = progress.add_task("runs finished", total=len(outcome.expected))
        steps_bar = progress.add_task("steps done", total=total_steps)
        approvals_bar = progress.add_task("approvals given", total=None)
        while len(outcome.results) < len(outcome.expected):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(outcome.expected) - len(outcome.results)} runs unfinished after "
                    f"{timeout_s:.0f}s; see {client.settings.home / 'logs'}/demo-*.log"
                )
            for name, proc in processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"the demo's {name} process exited with {proc.returncode}; "
                        f"see {client.settings.home / 'logs'}/demo-{name}.log"
                    )
            for topic, value in await watcher.poll():
                if topic == events_topic:
                    event = codec.decode_event(value)
                    if event.run_id not in outcome.expected:
                        continue
                    if isinstance(event, ev.StepSucceeded | ev.StepSkipped):
                        outcome.steps_done += 1
                        progress.update(steps_bar, completed=outcome.steps_done)
                    elif isinstance(event, ev.StepRetryScheduled):
                        outcome.retries += 1
                    elif isinstance(event, ev.ApprovalRequested):
                        await client.approve(
                            event.run_id, event.step_id, approver="demo", comment="looks right"
                        )
                        outcome.approvals += 1
                        progress.update(approvals_bar, completed=outcome.approvals)
                    states[type(event).__name__] += 1
                else:
                    result = codec.decode_result(value)
                    if isinstance(result, StepResult) or result.run_id not in outcome.expected:
                        continue
                    outcome.results[result.run_id] = result
                    progress.update(runs_bar, completed=len(outcome.results))


def _print_results(
    console: Console, outcome: DemoOutcome, tickets_by_run: dict[str, dict[str, Any]]
) -> None:
    table = Table(title="Ticket triage results (from apex.results)")
    for column in ("ticket", "status", "priority", "queue", "summary", "as expected"):
        table.add_column(column, no_wrap=column != "summary")
    for run_id, want in outcome.expected.items():
        ticket = tickets_by_run[run_id]
        result = outcome.results.get(run_id)
        outputs = (result.outputs or {}) if result else {}
        ok = bool(
            result
            and result.status == "completed"
            and outputs.get("queue") == want["queue"]
            and outputs.get("priority") == want["priority"]
        )
        table.add_row(
            ticket["ticket_id"],
            result.status if result else "-",
            str(outputs.get("priority", "-")),
            str(outputs.get("queue", "-")),
            escape(str(outputs.get("summary", ""))[:60]),
            "[green]yes[/]" if ok else "[red]no[/]",
        )
    console.print(table)
    console.print(
        f"{len(outcome.results)} runs finished, {outcome.steps_done} steps done, "
        f"{outcome.retries} retries, {outcome.approvals} approvals."
    )
