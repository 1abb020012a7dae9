"""The closed loop every end-to-end driver runs, and the JSON it reports.

``concurrency`` lanes each start a run, wait for its result, and start the next,
until ``runs`` runs were started or ``max_seconds`` passed: at any moment (but
the tail) ``concurrency`` runs are in flight. A run that fails or has no result
within ``run_timeout_s`` (300 s; the system may still finish it later) is
counted, never retried. Elapsed time is from the first start to the last result.
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
) -> LoopResult:
    result = LoopResult()
    started = 0
    deadline = time.monotonic() + max_seconds

    async def lane() -> None:
        nonlocal started
        while started < runs and time.monotonic() < deadline:
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

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    await asyncio.gather(*(lane() for _ in range(max(1, min(concurrency, runs)))))
    result.elapsed_s = time.perf_counter() - t0
    result.client_cpu_s = time.process_time() - cpu0
    return result


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
