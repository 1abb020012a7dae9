"""The decider alone: ``decide`` + ``evolve`` on a 10-step DAG with fan-out and joins.

Each run is driven from ``StartRun`` to ``RunCompleted`` by the reports a worker
would send — ``ReportTaskStarted`` then ``ReportTaskSucceeded`` for every
dispatched step — so one run is 21 commands. The clock measures only
the decider and folding its events through ``evolve``; building the commands
(the caller's work) is outside it, and counts in "commands/s incl. harness".

    .venv/bin/python benchmarks/bench_decider.py [--runs N] [--rounds N] [--json] [--clock cpu]
        [--profile]

Two ways of calling the decider are measured: ``decide_and_evolve`` (the events
and the state the decider folded them into: what the orchestrator runs) and
``decide`` followed by the caller folding each event through ``evolve``.

Each way is measured in ``--rounds`` rounds of ``--runs`` runs, the two taking
turns (another one first in each turn), and each figure is the median of its
rounds; ``rounds`` in the JSON keeps every round. A round lasts a few seconds,
and this VM's speed moves with its neighbours over seconds to minutes (one
round of 10,000 runs measured 71k-107k commands/s within ten minutes): a single
round reports the machine's phase as much as the decider.

Target (DESIGN.md, 2-core dev machine): >= 100,000 commands/s, p99 < 100 us.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import platform
import pstats
import statistics
import time
from dataclasses import dataclass
from typing import Any

from apex.domain import commands as cmd
from apex.domain import events as ev
from apex.domain.decider import decide, decide_and_evolve
from apex.domain.definitions import (
    FieldSpec,
    FieldType,
    Ref,
    RetryPolicy,
    StepDefinition,
    WorkflowDefinition,
)
from apex.domain.state import RunState, RunStatus, evolve

TARGET_COMMANDS_PER_S = 100_000
TARGET_P99_US = 100.0


def ten_step_dag() -> WorkflowDefinition:
    """a -> b1..b4 (fan-out) -> c (join) -> d1, d2 -> e (join) -> f: ten steps."""

    def out(step_id: str, *path: str) -> Ref:
        return Ref("steps", path, step_id=step_id)

    retry = RetryPolicy(max_attempts=3, initial_backoff_ms=500, jitter=0.2)
    bs = [f"b{i}" for i in range(1, 5)]
    steps = [
        StepDefinition("a", "parse", {"doc": Ref("input", ("doc",))}, retry=retry, timeout_ms=9000),
        *(
            StepDefinition(b, "classify", {"text": out("a", "text")}, ("a",), retry=retry)
            for b in bs
        ),
        StepDefinition("c", "merge", {b: out(b, "label") for b in bs}, tuple(bs), retry=retry),
        StepDefinition("d1", "call-llm", {"prompt": out("c")}, ("c",), retry=retry),
        StepDefinition("d2", "call-llm", {"prompt": out("c")}, ("c",), retry=retry),
        StepDefinition(
            "e", "summarize", {"x": out("d1", "answer"), "y": out("d2", "answer")}, ("d1", "d2")
        ),
        StepDefinition("f", "publish", {"summary": out("e")}, ("e",), publish=True),
    ]
    return WorkflowDefinition(
        name="bench-fan-out-join",
        version=1,
        steps=tuple(steps),
        input={"doc": FieldSpec(FieldType.STRING)},
        timeout_ms=600_000,
    )


@dataclass
class Result:
    runs: int
    commands: int
    events: int
    decider_seconds: float
    wall_seconds: float
    latencies_ns: list[int]

    def percentile_us(self, q: float) -> float:
        ordered = sorted(self.latencies_ns)
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[index] / 1_000

    def figures(self) -> dict[str, float]:
        return {
            "runs": self.runs,
            "commands": self.commands,
            "events": self.events,
            "commands_per_s": self.commands / self.decider_seconds,
            "events_per_s": self.events / self.decider_seconds,
            "harness_commands_per_s": self.commands / self.wall_seconds,
            "mean_us": statistics.fmean(self.latencies_ns) / 1_000,
            "p50_us": self.percentile_us(50),
            "p95_us": self.percentile_us(95),
            "p99_us": self.percentile_us(99),
            "max_us": max(self.latencies_ns) / 1_000,
        }


def drive(runs: int, *, fold_by_caller: bool = False, cpu_clock: bool = False) -> Result:
    """Drive ``runs`` runs; time ``decide_and_evolve`` (or ``decide`` then ``evolve``)."""
    definition = ten_step_dag()
    latencies: list[int] = []
    commands = events_total = 0
    clock = time.thread_time_ns if cpu_clock else time.perf_counter_ns
    wall_start = time.perf_counter()
    for n in range(runs):
        run_id = f"run-{n}"
        now = 0
        pending: list[cmd.Command] = [
            cmd.StartRun(
                command_id=f"{run_id}/start",
                run_id=run_id,
                issued_at_ms=now,
                definition_name=definition.name,
                definition_version=1,
                input={"doc": "a document"},
                idempotency_key=run_id,
                jitter_seed=n,
                definition=definition,
            )
        ]
        state: RunState | None = None
        while pending:
            command = pending.pop(0)
            if fold_by_caller:
                t0 = clock()
                events = decide(state, command)
                for event in events:
                    state = evolve(state, event)
                latencies.append(clock() - t0)
            else:
                t0 = clock()
                events, state = decide_and_evolve(state, command)
                latencies.append(clock() - t0)
            commands += 1
            events_total += len(events)
            now += 1
            for event in events:  # the worker's side: start and finish what was dispatched
                if isinstance(event, ev.StepDispatched):
                    common = {"run_id": run_id, "step_id": event.step_id, "attempt": event.attempt}
                    pending.append(
                        cmd.ReportTaskStarted(
                            command_id=f"{run_id}/{event.step_id}/started",
                            issued_at_ms=now,
                            worker_id="w-1",
                            **common,
                        )
                    )
                    pending.append(
                        cmd.ReportTaskSucceeded(
                            command_id=f"{run_id}/{event.step_id}/ok",
                            issued_at_ms=now + 1,
                            output={"text": "t", "label": "x", "answer": 42},
                            worker_id="w-1",
                            **common,
                        )
                    )
        assert state is not None and state.status is RunStatus.COMPLETED, state
    wall = time.perf_counter() - wall_start
    return Result(runs, commands, events_total, sum(latencies) / 1e9, wall, latencies)


def median_of_rounds(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Each figure's median over the rounds (``max_us``: the largest), and the rounds."""
    figures: dict[str, Any] = {
        key: statistics.median(r[key] for r in rounds) for key in rounds[0] if key != "max_us"
    }
    figures["max_us"] = max(r["max_us"] for r in rounds)
    figures["rounds"] = rounds
    return figures


MODES = {
    "decide_and_evolve": "decide_and_evolve (the state folded once, as the orchestrator runs it)",
    "decide_then_evolve": "decide, then evolve by the caller (every event folded twice)",
}


def report(results: dict[str, dict[str, Any]], clock: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            **results,
            "clock": clock,
            "target_commands_per_s": TARGET_COMMANDS_PER_S,
            "target_p99_us": TARGET_P99_US,
            "python": platform.python_version(),
        }))  # fmt: skip
        return
    from rich.console import Console
    from rich.table import Table

    first = next(iter(results.values()))
    rounds = len(first["rounds"])
    table = Table(
        title=f"decider: {first['runs']:,} runs of a 10-step DAG with fan-out and joins, "
        f"{first['commands']:,} commands, {first['events']:,} events a round ({clock} clock); "
        f"medians of {rounds} round(s)",
        caption="target: DESIGN.md, on the 2-core dev machine; 'x' = figure / target",
    )
    table.add_column("measure")
    for mode in results:
        table.add_column(mode, justify="right")
    table.add_column("target", justify="right")

    def row(name: str, key: str, fmt: str, target: str = "", good: float | None = None,
            higher_is_better: bool = True) -> None:  # fmt: skip
        cells = []
        for figures in results.values():
            text = format(figures[key], fmt)
            if good is not None:
                ratio = figures[key] / good
                ok = ratio >= 1 if higher_is_better else ratio < 1
                text = f"[{'green' if ok else 'red'}]{text} ({ratio:.2f}x)"
            cells.append(text)
        table.add_row(name, *cells, target)

    row("commands/s", "commands_per_s", ",.0f", f">= {TARGET_COMMANDS_PER_S:,}",
        TARGET_COMMANDS_PER_S)  # fmt: skip
    row("events/s", "events_per_s", ",.0f")
    row("commands/s incl. harness", "harness_commands_per_s", ",.0f")
    row("latency mean (us)", "mean_us", ".1f")
    row("latency p50 (us)", "p50_us", ".1f")
    row("latency p95 (us)", "p95_us", ".1f")
    row("latency p99 (us)", "p99_us", ".1f", f"< {TARGET_P99_US:.0f}", TARGET_P99_US, False)
    row("latency max (us)", "max_us", ".1f")
    console = Console()
    console.print(table)
    for mode, text in MODES.items():
        spread = sorted(r["commands_per_s"] for r in results[mode]["rounds"])
        console.print(f"  {mode}: {text}; commands/s by round {spread[0]:,.0f}-{spread[-1]:,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs", type=int, default=10_000, help="runs to drive a round (default 10,000)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of each way, taking turns; figures are the rounds' medians (default 5)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: perf_counter (default); cpu: this thread's CPU time, which leaves out "
        "time spent descheduled on a busy machine (each reading costs ~1 us more)",
    )
    parser.add_argument("--profile", action="store_true", help="print where the time goes")
    parser.add_argument("--warmup", type=int, default=200, help="runs driven before measuring")
    args = parser.parse_args()
    cpu = args.clock == "cpu"
    drive(args.warmup)
    drive(args.warmup, fold_by_caller=True)
    gc.collect()
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(drive, args.runs)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())
        return
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    rounds: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    order = list(MODES)
    for n in range(args.rounds):
        for mode in order[n % 2 :] + order[: n % 2]:  # another way first in each turn
            gc.collect()
            result = drive(args.runs, fold_by_caller=mode == "decide_then_evolve", cpu_clock=cpu)
            rounds[mode].append(result.figures())
    report({mode: median_of_rounds(rs) for mode, rs in rounds.items()}, args.clock, args.json)


if __name__ == "__main__":
    main()
