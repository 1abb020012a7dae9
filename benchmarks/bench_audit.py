"""``audit history`` for one run in a big log: latency (target < 100 ms at 1,000,000 events).

    .venv/bin/python benchmarks/bench_audit.py [--events 1000000] [--samples 200]
        [--gaps 0,500] [--quick] [--json]

A synthetic log (``synthetic_log.py``, 6 partitions, 200 runs interleaved per
partition, so one run's ~22 events are spread over ~4,000 records) is written
once to ``bench.audit.events`` and reused, and indexed once by a rebuild into
schema ``bench_audit`` (reused while its checkpoints match the log's end).

Then, for randomly chosen runs, ``apex.audit.history.run_history`` — look the
run up in the event index, read exactly those offsets from Kafka, decode — is
timed end to end:

* **warm**: one started reader and one engine for all calls (a service);
* **cold**: a new Kafka consumer per call (bootstrap + metadata), as a CLI
  invocation pays it (Python's own start-up not included).

``--gaps`` compares read-through thresholds (``APEX_AUDIT_SEEK_GAP``): 0 seeks to
every event; larger values read through the records between close events.
Needs the dev stack. Figures only: the test suite never asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from apex.audit.history import run_history
from apex.config import Settings
from apex.kafka.event_log import EventLogReader
from apex.projections.rebuild import rebuild
from apex.projections.store import read_checkpoints
from benchmarks.machine import machine
from benchmarks.stats import latency_summary_ms, median
from benchmarks.synthetic_log import ensure_log

TARGET_MS = 100.0
TOPIC_PREFIX = "bench.audit."
SCHEMA = "bench_audit"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log")
    parser.add_argument("--samples", type=int, default=200, help="runs looked up (warm)")
    parser.add_argument("--cold", type=int, default=20, help="runs looked up (cold)")
    parser.add_argument("--gaps", default="0,500", help="read-through thresholds to compare")
    parser.add_argument("--quick", action="store_true", help="100,000 events, 50 samples")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.samples, args.cold = 100_000, 50, 5
    report = asyncio.run(measure(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_tables(report)
    return 0


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    settings = replace(Settings.from_env(), topic_prefix=TOPIC_PREFIX, read_model_schema=SCHEMA)
    topic = settings.topic("events")
    started = time.perf_counter()
    events, reused = await ensure_log(settings, topic, args.events, partitions=6)
    generated_s = time.perf_counter() - started
    engine = create_async_engine(settings.sqlalchemy_url)
    try:
        indexed_s = await ensure_index(settings, engine, topic)
        async with engine.connect() as connection:
            result = await connection.execute(
                text(f'SELECT run_id FROM "{SCHEMA}".runs ORDER BY run_id')
            )
            all_runs = [row[0] for row in result]
        rng = random.Random(7)
        sample = rng.sample(all_runs, min(args.samples, len(all_runs)))
        gaps = [int(g) for g in args.gaps.split(",")]
        warm = {gap: await time_warm(settings, engine, sample, gap) for gap in gaps}
        best_gap = min(gaps, key=lambda g: warm[g]["latency"]["p50_ms"])
        cold = await time_cold(settings, engine, sample[: args.cold], best_gap)
    finally:
        await engine.dispose()
    headline = warm[best_gap]
    return {
        "warm": headline["latency"],
        "cold": cold["latency"],
        "target_ms": TARGET_MS,
        "best_gap": best_gap,
        "by_gap": {str(g): w for g, w in warm.items()},
        "log": {
            "topic": topic,
            "events": events,
            "runs": len(all_runs),
            "reused": reused,
            "generation_s": round(generated_s, 1),
            "indexing_s": indexed_s,
        },
        "machine": machine(),
    }


async def ensure_index(settings: Settings, engine: AsyncEngine, topic: str) -> float | None:
    """Rebuild the read models unless they already index the whole topic."""
    async with EventLogReader(settings) as log:
        ends = await log.end_offsets(topic)
    try:
        async with engine.connect() as connection:
            checkpoints = await read_checkpoints(connection, SCHEMA)
    except Exception:  # no schema yet
        checkpoints = {}
    if all(checkpoints.get((topic, p)) == end for p, end in ends.items()):
        return None
    started = time.perf_counter()
    await rebuild(settings, engine)
    return round(time.perf_counter() - started, 1)


async def time_warm(
    settings: Settings, engine: AsyncEngine, runs: list[str], gap: int
) -> dict[str, Any]:
    seconds, reads, fetches, sizes = [], [], [], []
    async with EventLogReader(settings) as reader:
        await run_history(settings, engine, runs[0], reader=reader, gap=gap)  # warm-up
        for run_id in runs:
            t0 = time.perf_counter()
            history = await run_history(settings, engine, run_id, reader=reader, gap=gap)
            seconds.append(time.perf_counter() - t0)
            reads.append(history.records_read)
            fetches.append(history.fetches)
            sizes.append(len(history.events))
    return {
        "latency": latency_summary_ms(seconds),
        "median_events": median(sizes),
        "median_records_read": median(reads),
        "median_fetches": median(fetches),
    }


async def time_cold(
    settings: Settings, engine: AsyncEngine, runs: list[str], gap: int
) -> dict[str, Any]:
    seconds = []
    for run_id in runs:
        t0 = time.perf_counter()
        await run_history(settings, engine, run_id, gap=gap)  # its own consumer
        seconds.append(time.perf_counter() - t0)
    return {"latency": latency_summary_ms(seconds)}


def print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    info = report["machine"]
    log = report["log"]
    table = Table(
        title=(
            f"audit history of one run in a log of {log['events']:,} events "
            f"({log['runs']:,} runs); target < {TARGET_MS:.0f} ms"
        ),
        caption=f"{info['cores']} cores ({info['cpu_model']}), load {info['load_average']}",
    )
    for column in ("case", "p50 ms", "p95 ms", "p99 ms", "max ms", "records read", "fetches"):
        table.add_column(column, justify="right")
    for gap, row in report["by_gap"].items():
        lat = row["latency"]
        table.add_row(
            f"warm, gap {gap}",
            f"{lat['p50_ms']}",
            f"{lat['p95_ms']}",
            f"{lat['p99_ms']}",
            f"{lat['max_ms']}",
            f"{row['median_records_read']:,.0f}",
            f"{row['median_fetches']:,.0f}",
        )
    cold = report["cold"]
    table.add_row(
        f"cold (new consumer), gap {report['best_gap']}",
        f"{cold['p50_ms']}",
        f"{cold['p95_ms']}",
        f"{cold['p99_ms']}",
        f"{cold['max_ms']}",
        "",
        "",
    )
    Console().print(table)


if __name__ == "__main__":
    raise SystemExit(main())
