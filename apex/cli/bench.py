"""``apex bench``: the performance harness of benchmarks/, with Rich progress.

The harness lives in the repository (``benchmarks/``), not in the installed
package: this command needs a checkout (an editable install is one).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from apex.cli._console import console, err_console, print_error
from apex.config import REPO_ROOT


def register(root: typer.Typer) -> None:
    root.command("bench")(bench)


def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="CI-sized: fewer runs and lower concurrency.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON on stdout (progress: stderr).")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="Run only scenarios matching this pattern (repeatable): decider, codec, "
            "e2e.chain5.c100, 'e2e.*', memory, projection-lag, rebuild, audit.",
        ),
    ] = None,
    peers: Annotated[
        str,
        typer.Option(help="Peers to run side by side: 'temporal,dbos', one of them, or 'none'."),
    ] = "temporal,dbos",
    no_peers: Annotated[bool, typer.Option("--no-peers", help="Apex alone.")] = False,
    repeat: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Run each end-to-end cell N times, the systems taking turns; report medians "
            "(default: 5 at one run in flight, 1 above).",
        ),
    ] = None,
    profile: Annotated[
        bool,
        typer.Option(
            help="py-spy the orchestrator and worker in a run of the throughput scenario, and "
            "cut the hop at one run into segments (a run of chain5 c=1 with its requests timed)."
        ),
    ] = False,
    worker_concurrency: Annotated[
        int, typer.Option(min=1, help="Tasks one worker runs at once, for every system.")
    ] = 100,
    memory_runs: Annotated[
        int, typer.Option(min=1, help="Active runs of the memory scenario.")
    ] = 10_000,
    warm_broker_s: Annotated[
        float,
        typer.Option(
            "--warm-broker-s",
            min=0,
            help="Seconds of throwaway load before the first end-to-end cell, so that the "
            "broker's JIT is not billed to it (not with --quick; 0: none).",
        ),
    ] = 90.0,
    results_dir: Annotated[
        Path | None, typer.Option(help="Where the JSON goes (default benchmarks/results/).")
    ] = None,
    markdown: Annotated[
        Path | None,
        typer.Option(
            help="Where the Markdown goes (default: benchmarks/RESULTS.md for a full run; "
            "none for --quick or --only)."
        ),
    ] = None,
) -> None:
    """Benchmark Apex against Temporal and DBOS on this machine; write the results.

    Needs the local stack (`apex dev up`). Peers that cannot be built or started
    are reported with the reason, and Apex is measured alone.
    """
    harness = _import_harness()
    wanted = () if no_peers or peers.strip() == "none" else _peer_names(peers, harness.PEERS)
    options = harness.Options(
        quick=quick,
        only=tuple(only or ()),
        peers=wanted,
        repeat=repeat,
        profile=profile,
        worker_concurrency=worker_concurrency,
        memory_runs=memory_runs,
        warm_broker_s=warm_broker_s,
        results_dir=results_dir or harness.RESULTS_DIR,
        markdown=markdown,
    )
    if not harness.plan(options):
        print_error("apex bench: nothing to run", f"no scenario matches --only {list(only or [])}")
        raise typer.Exit(2)
    out = err_console if as_json else console
    started = time.monotonic()
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TimeElapsedColumn(),
        console=out,
        transient=False,
    ) as progress:
        task = progress.add_task("starting", total=None)

        def say(message: str) -> None:
            progress.update(task, description=message)
            progress.console.log(message)

        try:
            report = harness.run(options, say)
        except Exception as exc:
            print_error("apex bench failed", f"{exc!r}\n(is the stack up? `apex dev status`)")
            raise typer.Exit(1) from exc
        progress.update(task, description=f"done in {time.monotonic() - started:.0f} s")
    _show(report, as_json)


def _show(report: dict[str, Any], as_json: bool) -> None:
    from benchmarks.report import rich_table, targets_table

    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    console.print(rich_table(report))
    console.print(targets_table(report))
    for name, status in report.get("peers", {}).items():
        if status.get("status") != "ok":
            console.print(f"[yellow]{name} not measured:[/] {status.get('reason')}", markup=True)
    console.print(f"results: {report['results_file']}")
    if "markdown_file" in report:
        console.print(f"markdown: {report['markdown_file']}")


def _peer_names(text: str, known: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown:
        print_error("apex bench: unknown peer", f"{unknown}; known peers: {', '.join(known)}")
        raise typer.Exit(2)
    return names


def _import_harness() -> Any:
    if not (REPO_ROOT / "benchmarks" / "harness.py").exists():
        print_error(
            "apex bench: no benchmarks/ folder",
            f"the harness lives in the Apex repository, not in the installed package "
            f"(looked in {REPO_ROOT}); run it from a checkout: pip install -e .",
        )
        raise typer.Exit(2)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import harness

    return harness
