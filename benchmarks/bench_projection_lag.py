"""Projection lag under load: event appended → its rows committed in PostgreSQL.

    .venv/bin/python benchmarks/bench_projection_lag.py [--rate 12000] [--seconds 20]
        [--quick] [--json]

A producer process appends synthetic events (``synthetic_log.py``: real decider
output, 200 runs interleaved per partition, 6 partitions) at ``--rate`` events/s
— 12,000/s is the DESIGN throughput target's 3,000 steps/s at about four events
per step — while this process runs the live projector (``streams/projector.py``,
statement backend, one PostgreSQL transaction per poll) into a fresh
schema. An event's lag is the time from its record timestamp (set when the
producer sent it) to the COMMIT of the transaction that applied it. Target
(DESIGN.md): p99 < 250 ms. The topic and schema are dropped afterwards. Needs
the dev stack. Figures only: the test suite never asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import resource
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy.ext.asyncio import create_async_engine

from apex.config import Settings
from apex.devstack.topics import delete_topics
from apex.kafka.clients import make_producer
from apex.kafka.topology import ensure_topics
from apex.projections.migrate import migrate
from benchmarks.machine import machine
from benchmarks.stats import latency_summary_ms
from benchmarks.synthetic_log import records_for_partition
from streams.projector import BatchOutcome, Projector

TARGET_P99_MS = 250.0
PARTITIONS = 6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=12_000, help="events appended per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to append")
    parser.add_argument("--quick", action="store_true", help="3,000 events/s for 5 s")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.quick:
        args.rate, args.seconds = 3_000, 5.0
    report = asyncio.run(measure(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


class _TimedProjector(Projector):
    """The projector, noting each applied event's lag once its transaction committed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lags_s: list[float] = []
        self.expected = 0
        self.all_applied = asyncio.Event()
        self.received_s: list[float] = []
        """Record timestamp -> the batch handed to apply (Kafka and the poll loop)."""
        self.transactions_s: list[float] = []
        """apply_many -> COMMIT of one poll's transaction (fold, rows, checkpoints)."""

    async def apply_many(
        self, work: Sequence[tuple[TopicPartition, Sequence[Any], int | None]]
    ) -> dict[TopicPartition, BatchOutcome]:
        received_ms = time.time() * 1000
        outcomes = await super().apply_many(work)
        now_ms = time.time() * 1000
        applied = [rec for tp, records, _ in work if outcomes[tp].applied for rec in records]
        if applied:
            self.lags_s.extend((now_ms - rec.timestamp) / 1000 for rec in applied)
            self.received_s.extend((received_ms - rec.timestamp) / 1000 for rec in applied)
            self.transactions_s.append((now_ms - received_ms) / 1000)
            if len(self.lags_s) >= self.expected:
                self.all_applied.set()
        return outcomes


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench.lag.{uuid.uuid4().hex[:8]}."
    schema = f"bench_lag_{uuid.uuid4().hex[:8]}"
    settings = replace(
        Settings.from_env(), topic_prefix=prefix, read_model_schema=schema, partitions=PARTITIONS
    )
    await ensure_topics(settings)
    engine = create_async_engine(settings.sqlalchemy_url)
    await migrate(engine, schema)
    total = int(args.rate * args.seconds)
    projector = _TimedProjector(settings, engine)
    projector.expected = total
    task = asyncio.create_task(projector.run())
    try:
        await asyncio.sleep(3.0)  # joined the group, partitions assigned
        context = multiprocessing.get_context("spawn")
        producer = context.Process(
            target=_produce, args=(settings, settings.topic("events"), total, args.rate)
        )
        started = time.perf_counter()
        cpu_before = _cpu_seconds()
        producer.start()
        await asyncio.get_running_loop().run_in_executor(None, producer.join)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(projector.all_applied.wait(), timeout=120)
        elapsed = time.perf_counter() - started
        cpu_s = _cpu_seconds() - cpu_before
    finally:
        projector.stop()
        await task
        async with engine.begin() as connection:
            await connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await engine.dispose()
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await delete_topics(
                admin, [t for t in await admin.list_topics() if t.startswith(prefix)]
            )
        finally:
            await admin.close()
    return {
        "lag": latency_summary_ms(projector.lags_s),
        "received": latency_summary_ms(projector.received_s),
        "transaction": latency_summary_ms(projector.transactions_s),
        "stats": vars(projector.stats),
        "target_p99_ms": TARGET_P99_MS,
        "rate_events_per_s": args.rate,
        "events": total,
        "applied": len(projector.lags_s),
        "batches": projector.stats.batches,
        "events_per_batch": round(projector.stats.events / max(1, projector.stats.batches), 1),
        "seconds": round(elapsed, 1),
        # Load-independent: the projector process's own CPU (the producer is a
        # child process, not counted) per event it applied.
        "projector_cpu_s": round(cpu_s, 2),
        "cpu_us_per_event": round(cpu_s / max(1, len(projector.lags_s)) * 1e6, 1),
        "events_per_cpu_s": round(len(projector.lags_s) / cpu_s) if cpu_s else 0,
        "machine": machine(),
    }


def _cpu_seconds() -> float:
    """CPU time of this process alone (the producer child is not in RUSAGE_SELF)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _produce(settings: Settings, topic: str, total: int, rate: int) -> None:
    """The producer process: encode first, then append at ``rate`` events/s."""
    per_partition = -(-total // PARTITIONS)
    payloads = [
        [
            (key, value, headers)
            for key, value, headers, _run in records_for_partition(
                per_partition, seed=p, prefix=f"lag{p}"
            )
        ]
        for p in range(PARTITIONS)
    ]
    order: list[tuple[int, tuple[bytes, bytes, list[tuple[str, bytes]]]]] = []
    for i in range(per_partition):
        order.extend((p, payloads[p][i]) for p in range(PARTITIONS) if i < len(payloads[p]))
    del order[total:]

    async def run() -> None:
        producer = make_producer(settings, linger_ms=1)
        await producer.start()
        try:
            started = time.perf_counter()
            tick = 0.005
            for i in range(0, len(order), max(1, int(rate * tick))):
                due = started + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                for p, (key, value, headers) in order[i : i + max(1, int(rate * tick))]:
                    await producer.send(topic, value, key=key, headers=headers, partition=p)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(run())


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    lag = report["lag"]
    info = report["machine"]
    table = Table(
        title=(
            f"Projection lag at {report['rate_events_per_s']:,} events/s "
            f"(target p99 < {TARGET_P99_MS:.0f} ms)"
        ),
        caption=(
            f"{report['applied']:,} events in {report['batches']:,} transactions "
            f"({report['events_per_batch']} per batch); projector CPU "
            f"{report['cpu_us_per_event']} µs/event ({report['events_per_cpu_s']:,} events/CPU-s); "
            f"{info['cores']} cores, load {info['load_average']}"
        ),
    )
    for column in ("p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right")
    table.add_row(str(lag["p50_ms"]), str(lag["p95_ms"]), str(lag["p99_ms"]), str(lag["max_ms"]))
    Console().print(table)


if __name__ == "__main__":
    raise SystemExit(main())
