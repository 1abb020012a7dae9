"""The closed loop every end-to-end driver runs, and the JSON it reports.

``concurrency`` lanes each start a run, wait for its result, and start the next,
until ``runs`` runs were started (and ``min_seconds`` passed, for a warm-up) or
``max_seconds`` passed: at any moment (but the tail) ``concurrency`` runs are in
flight. A run that fails or has no result within ``run_timeout_s`` (300 s; the
system may still finish it later) is counted, never retried. Elapsed time is
from the first start to the last result.

Every driver warms its system up the same way first (:func:`warm_up`): at least
``--warmup`` runs *and* at least ``--warmup-seconds``, not measured. The seconds
are there for Apex's fresh topics: each partition's first offset- and time-index
entries (after its first 4 KB) touch new pages of the broker's memory-mapped
index files, each a page fault that took ~27 ms on this VM's disk under load.
With 20 warm-up runs that landed in the measured runs of a one-run cell (a
run's result waiting ~55 ms for its markers). A deployment's topics are long
lived; the measurement is of that steady state, for every system alike.
benchmarks/README.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.stats import latency_summary_ms
from benchmarks.workload import SHAPES, Shape, hops_of

WARMUP_SECONDS = 10.0
"""Default least warm-up time of every driver (the harness passes its own)."""

RunOne = Callable[[], Awaitable[Any]]
"""Start one run and return its outputs once it finished."""


@dataclass
class LoopResult:
    completed: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    run_latencies: list[float] = field(default_factory=list)
    hops: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0
    """CPU of the driver process itself (the client; for DBOS also the application)."""


async def closed_loop(
    run_one: RunOne,
    *,
    concurrency: int,
    runs: int,
    max_seconds: float,
    run_timeout_s: float = 300.0,
    min_seconds: float = 0.0,
) -> LoopResult:
    """Runs until ``runs`` were started and ``min_seconds`` passed, or ``max_seconds``."""
    result = LoopResult()
    started = 0
    begun = time.perf_counter()  # one instant for the bounds and the elapsed time

    def more() -> bool:
        ran = time.perf_counter() - begun
        return ran < max_seconds and (started < runs or ran < min_seconds)

    async def lane() -> None:
        nonlocal started
        while more():
            started += 1
            t0 = time.perf_counter()
            try:
                outputs = await asyncio.wait_for(run_one(), run_timeout_s)
            except Exception as exc:  # a failed run is a figure, not a crash
                result.failed += 1
                if len(result.errors) < 5:
                    result.errors.append(repr(exc)[:300])
                continue
            result.run_latencies.append(time.perf_counter() - t0)
            result.hops.extend(hops_of(outputs))
            result.completed += 1

    cpu0 = time.process_time()
    await asyncio.gather(*(lane() for _ in range(max(1, min(concurrency, runs)))))
    result.elapsed_s = time.perf_counter() - begun
    result.client_cpu_s = time.process_time() - cpu0
    return result


async def warm_up(run_one: RunOne, args: argparse.Namespace) -> LoopResult:
    """The runs before the measured ones: ``--warmup`` runs and ``--warmup-seconds``."""
    warm = await closed_loop(
        run_one,
        concurrency=min(args.concurrency, args.warmup),
        runs=args.warmup,
        min_seconds=args.warmup_seconds,
        max_seconds=max(90.0, args.warmup_seconds + 60.0),
        run_timeout_s=90,
    )
    if warm.completed == 0:
        raise RuntimeError(f"no warm-up run finished: {warm.errors}")
    return warm


def report(
    system: str, shape: Shape, concurrency: int, loop: LoopResult, **extra: Any
) -> dict[str, Any]:
    """The figures of one (system, shape, concurrency) cell."""
    elapsed = loop.elapsed_s or float("nan")
    return {
        "system": system,
        "shape": shape.name,
        "concurrency": concurrency,
        "runs_completed": loop.completed,
        "runs_failed": loop.failed,
        "steps_completed": loop.completed * shape.steps,
        "elapsed_s": round(loop.elapsed_s, 3),
        "runs_per_s": round(loop.completed / elapsed, 2),
        "steps_per_s": round(loop.completed * shape.steps / elapsed, 1),
        "step_to_step": latency_summary_ms(loop.hops),
        "run_latency": latency_summary_ms(loop.run_latencies),
        "client_cpu_share_of_one_core": round(loop.client_cpu_s / elapsed, 3),
        "errors": loop.errors,
        **extra,
    }


def driver_arguments(description: str) -> argparse.ArgumentParser:
    """The command line every driver takes (the harness passes the same to each)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--concurrency", type=int, required=True, help="runs in flight")
    parser.add_argument("--runs", type=int, required=True, help="runs to start (measured)")
    parser.add_argument("--warmup", type=int, default=20, help="runs first, not measured")
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=WARMUP_SECONDS,
        help="and warm up for at least this long",
    )
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop starting runs")
    parser.add_argument("--worker-concurrency", type=int, default=100, help="tasks per worker")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def emit(figures: dict[str, Any], as_json: bool) -> None:
    """The driver's answer: one JSON document on stdout (the harness reads it)."""
    if as_json:
        sys.stdout.write(json.dumps(figures) + "\n")
        return
    hops = figures.get("step_to_step", {})
    print(
        f"{figures['system']} {figures['shape']} c={figures['concurrency']}: "
        f"{figures['steps_per_s']} steps/s, {figures['runs_per_s']} runs/s, "
        f"step-to-step p50 {hops.get('p50_ms')} ms p99 {hops.get('p99_ms')} ms "
        f"({figures['runs_completed']} runs, {figures['runs_failed']} failed)"
    )
