"""``apex demo``: support-ticket triage, end to end on the real stack.

See :mod:`apex.demo.runner` for what it does. Exit status 0 only when every run
ended as its ticket calls for; 1 otherwise, with each mismatch listed.
"""

from __future__ import annotations

import asyncio
import json

import typer

from apex.cli._console import console, print_error
from apex.config import Settings


def register(root: typer.Typer) -> None:
    root.command("demo")(demo)


def demo(
    runs: int = typer.Option(21, "--runs", "-n", min=1, max=5000, help="Tickets to triage."),
    workers: int = typer.Option(2, "--workers", "-w", min=1, max=8, help="Worker processes."),
    timeout: float = typer.Option(180.0, "--timeout", help="Seconds to wait for every run."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of tables."),
) -> None:
    """Triage a batch of support tickets: parse → (redact PII ‖ classify) → summarize →
    approval for high priority → route. Starts the stack, an orchestrator, the timer
    service and worker processes; approves what waits; checks every result."""
    from apex.demo.runner import run_demo

    settings = Settings.from_env()
    quiet = console if not as_json else None
    try:
        outcome = asyncio.run(
            run_demo(settings, count=runs, workers=workers, timeout_s=timeout, console=quiet)
        )
    except (TimeoutError, RuntimeError) as exc:
        print_error("The demo did not finish", str(exc))
        raise typer.Exit(1) from exc
    problems = outcome.mismatches()
    if as_json:
        summary = {
            "runs": len(outcome.expected),
            "finished": len(outcome.results),
            "steps_done": outcome.steps_done,
            "retries": outcome.retries,
            "approvals": outcome.approvals,
            "problems": problems,
        }
        print(json.dumps(summary))
    if problems:
        print_error("Some runs did not end as expected", "\n".join(problems))
        raise typer.Exit(1)
    if not as_json:
        console.print("[bold green]Every run ended as expected.[/]")
