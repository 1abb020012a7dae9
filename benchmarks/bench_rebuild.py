"""Rebuilding the read models from the log: events per second (target ≥ 50,000/s).

    .venv/bin/python benchmarks/bench_rebuild.py [--events 300000] [--repeat 3]
        [--workers 1,2] [--quick] [--json]

A synthetic log (``synthetic_log.py``: runs played through the real decider,
cloned, interleaved 200 at a time per partition, 6 partitions) is written once
to ``bench.rebuild.events`` and reused. Each repeat is a full
``apex.projections.rebuild.rebuild``: migrate a fresh schema, read every
partition from Kafka, fold every event through ``project``/``evolve``, COPY
the rows, swap the schema in. Events/s counts the records read over the whole
wall time, migration and swap included.

It also times, in this process and without I/O, what one event costs the CPU
(decode; fold) — the fold is ``evolve`` into one draft per run
(``rows.ViewFold``), and so bounds what one process can do. Needs the dev stack (``apex
dev up``). Figures only: the test suite never asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from sqlalchemy.ext.asyncio import create_async_engine

from apex import codec
from apex.config import Settings
from apex.projections import rows as r
from apex.projections.rebuild import rebuild
from benchmarks.machine import machine
from benchmarks.synthetic_log import ensure_log, records_for_partition

TARGET = 50_000
TOPIC_PREFIX = "bench.rebuild."
SCHEMA = "bench_rebuild"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000, help="events in the log")
    parser.add_argument("--repeat", type=int, default=3, help="rebuilds per worker count")
    parser.add_argument(
        "--workers", default="1,2", help="comma-separated worker-process counts to try"
    )
    parser.add_argument("--quick", action="store_true", help="50,000 events, one repeat")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeat = 50_000, 1
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
    results = []
    try:
        for workers in (int(w) for w in args.workers.split(",")):
            samples, cpu = [], []
            for _ in range(args.repeat):
                before = _cpu_seconds()
                report = await rebuild(settings, engine, workers=workers)
                cpu.append(_cpu_seconds() - before)
                samples.append(report)
            rates = [s.events_per_s for s in samples]
            results.append(
                {
                    "workers": workers,
                    "events_per_s": round(statistics.median(rates)),
                    "min_events_per_s": round(min(rates)),
                    "max_events_per_s": round(max(rates)),
                    "median_seconds": round(statistics.median(s.seconds for s in samples), 2),
                    "events": samples[0].events,
                    "runs": samples[0].runs,
                    # Load-independent: events per second of Python CPU (this
                    # process and its workers; PostgreSQL's own CPU not counted).
                    "events_per_python_cpu_s": round(samples[0].events / statistics.median(cpu)),
                }
            )
    finally:
        await engine.dispose()
    best = max(results, key=lambda row: row["events_per_s"])
    return {
        "events_per_s": best["events_per_s"],
        "best_workers": best["workers"],
        "target_events_per_s": TARGET,
        "ratio_to_target": round(best["events_per_s"] / TARGET, 2),
        "by_workers": results,
        "cpu_per_event_us": cpu_per_event(),
        "log": {
            "topic": topic,
            "events": events,
            "reused": reused,
            "generation_s": round(generated_s, 1),
        },
        "machine": machine(),
    }


def _cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (the worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cpu_per_event(n: int = 20_000) -> dict[str, float]:
    """Decode and fold of one event, in-process CPU time (median of 3 passes)."""
    values = [value for _key, value, _headers, _run in records_for_partition(n)]
    decode, fold = [], []
    for _ in range(3):
        t0 = time.process_time()
        events = [codec.decode_event(v) for v in values]
        t1 = time.process_time()
        fold_ = r.ViewFold()  # as the rebuild folds: one draft per run, frozen at the end
        for e in events:
            fold_.apply(e)
        fold_.freeze()
        t2 = time.process_time()
        decode.append((t1 - t0) / len(values) * 1e6)
        fold.append((t2 - t1) / len(values) * 1e6)
    return {
        "decode_us": round(statistics.median(decode), 2),
        "fold_us": round(statistics.median(fold), 2),
    }


def print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    info = report["machine"]
    table = Table(
        title=f"Read-model rebuild of {report['log']['events']:,} events (target ≥ {TARGET:,}/s)",
        caption=(
            f"{info['cores']} cores ({info['cpu_model']}), load {info['load_average']}. "
            f"CPU per event in one process: decode {report['cpu_per_event_us']['decode_us']} µs, "
            f"fold {report['cpu_per_event_us']['fold_us']} µs."
        ),
    )
    for column in (
        "workers",
        "median events/s",
        "min",
        "max",
        "median s",
        "vs target",
        "events/CPU-s",
    ):
        table.add_column(column, justify="right")
    for row in report["by_workers"]:
        table.add_row(
            str(row["workers"]),
            f"{row['events_per_s']:,}",
            f"{row['min_events_per_s']:,}",
            f"{row['max_events_per_s']:,}",
            f"{row['median_seconds']}",
            f"{row['events_per_s'] / TARGET:.2f}x",
            f"{row['events_per_python_cpu_s']:,}",
        )
    Console().print(table)


if __name__ == "__main__":
    raise SystemExit(main())
