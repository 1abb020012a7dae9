"""Rebuild the read models from the log, and switch readers over atomically.

    report = await rebuild(settings, engine, on_progress=bar.update)

1. A fresh schema ``<schema>_new_<timestamp>`` is migrated to head.
2. Each partition of ``apex.events`` is read from its start to the end offset
   taken when the rebuild began (the last stable offset: nothing after it can
   still be aborted), folded in memory through the same
   :class:`~apex.projections.rows.ViewFold` the live projector uses, and written
   through the same store port by its bulk backend
   (:class:`~apex.projections.store.CopyProjectionStore`): the event index in
   COPY chunks while reading, then every run, step and approval row, the
   partition's definition counts and its checkpoint in one transaction
   (:mod:`apex.projections.replay`; with several workers, the first group of
   partitions in this process and each other group in a spawned one).
3. ONE transaction locks the live checkpoints (waiting for a live projector's
   batch in flight), renames the live schema to ``<schema>_old_<timestamp>``,
   the new one to ``<schema>``, and drops the old one. A reader sees the old
   model or the new one, never a half-built one.

The old schema is dropped *in* the swap transaction, not after it: a long-lived
connection may hold prepared statements planned against the old tables, and
PostgreSQL re-plans them when those tables are dropped, not when their schema
is renamed; dropping them at once makes every such statement resolve
``<schema>.<table>`` again — to the new tables. (``keep_old=True`` keeps the old
schema for inspection; then restart live projectors after the swap.)

A live projector notices on its next batch, or within a second when no event
comes (:data:`streams.projector.RECHECK_S`): the checkpoint it locks is the
rebuild's end offset, not the one it left, so it seeks there and goes on.

If anything fails before the swap, the new schema is dropped and the live one
is untouched. This is also how a new projection is added to a running system:
deploy the migration, rebuild, swap.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from queue import Empty
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from apex.config import Settings
from apex.kafka.event_log import EventLogReader
from apex.projections.migrate import migrate
from apex.projections.replay import Counts, init_worker, replay_partitions, worker_main
from apex.projections.schema import quote_ident

__all__ = ["RebuildReport", "rebuild", "swap_schemas"]

log = logging.getLogger("apex.rebuild")

Progress = Callable[[int, int], None]
"""``on_progress(records_done, records_total)``."""


@dataclass
class RebuildReport:
    schema: str
    built_as: str
    events: int = 0
    runs: int = 0
    skipped: int = 0
    """Records that could not be decoded or folded (the live projector sends them to the DLQ)."""
    end_offsets: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    swapped: bool = False

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def rebuild(
    settings: Settings,
    engine: AsyncEngine,
    *,
    schema: str | None = None,
    topic: str | None = None,
    on_progress: Progress | None = None,
    swap: bool = True,
    keep_old: bool = False,
    workers: int | None = None,
) -> RebuildReport:
    """Build the read models of ``topic`` (default ``apex.events``) afresh and swap them in.

    ``workers`` processes fold partitions side by side (default: the
    ``APEX_REBUILD_WORKERS`` setting; 0 means one per core when the log has more
    than :data:`PARALLEL_FROM` records — folding is CPU-bound Python).
    """
    schema = schema or settings.read_model_schema
    topic = topic or settings.topic("events")
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
    new = f"{schema}_new_{stamp}"
    quote_ident(new)  # long live-schema names would make it too long: say so before work
    report = RebuildReport(schema=schema, built_as=new)
    started = time.perf_counter()
    await migrate(engine, new)
    try:
        async with EventLogReader(settings) as reader:
            begins = await reader.beginning_offsets(topic)
            ends = await reader.end_offsets(topic)
        report.end_offsets = ends
        total = sum(ends[p] - begins.get(p, 0) for p in ends)
        done = 0

        def progress(n: int) -> None:
            nonlocal done
            done += n
            if on_progress is not None:
                on_progress(done, total)

        groups = _groups(sorted(ends), _workers(settings, workers, total, len(ends)))
        if len(groups) <= 1:
            counts = await replay_partitions(settings, engine, new, topic, ends, progress)
        else:
            counts = await _in_processes(settings, engine, new, topic, ends, groups, progress)
        report.events, report.runs, report.skipped = counts
        if swap:
            await swap_schemas(engine, schema, new, keep_old=keep_old, stamp=stamp)
            report.swapped = True
    except BaseException:
        await _drop_schema(engine, new)
        raise
    finally:
        report.seconds = time.perf_counter() - started
    return report


PARALLEL_FROM = 200_000
"""Below this many records, starting worker processes costs more than it saves."""


def _workers(settings: Settings, workers: int | None, total: int, partitions: int) -> int:
    wanted = settings.rebuild_workers if workers is None else workers
    if wanted <= 0:
        wanted = (os.cpu_count() or 1) if total >= PARALLEL_FROM else 1
    return max(1, min(wanted, partitions))


def _groups(partitions: list[int], workers: int) -> list[list[int]]:
    groups: list[list[int]] = [[] for _ in range(workers)]
    for i, partition in enumerate(partitions):
        groups[i % workers].append(partition)
    return [g for g in groups if g]


async def _in_processes(
    settings: Settings,
    engine: AsyncEngine,
    schema: str,
    topic: str,
    ends: dict[int, int],
    groups: list[list[int]],
    progress: Callable[[int], None],
) -> Counts:
    """The first group of partitions in this process, each other one in a process of its
    own (spawned: no inherited event loop).

    This process would only wait for the workers otherwise: folding a group
    here saves a worker's start-up (an interpreter and its imports, about a
    second of CPU) on the cores the workers and PostgreSQL share.
    """
    context = multiprocessing.get_context("spawn")
    queue: Any = context.Queue()
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(
        len(groups) - 1, mp_context=context, initializer=init_worker, initargs=(queue,)
    ) as pool:
        futures: list[asyncio.Future[Counts]] = [
            loop.run_in_executor(
                pool, worker_main, settings, schema, topic, {p: ends[p] for p in group}
            )
            for group in groups[1:]
        ]
        here = asyncio.ensure_future(
            replay_partitions(
                settings, engine, schema, topic, {p: ends[p] for p in groups[0]}, progress
            )
        )
        pending: set[asyncio.Future[Counts]] = {here, *futures}
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.2)
            _drain(queue, progress)
        _drain(queue, progress)
        results = [f.result() for f in (here, *futures)]
    return (
        sum(c[0] for c in results),
        sum(c[1] for c in results),
        sum(c[2] for c in results),
    )


def _drain(queue: Any, progress: Callable[[int], None]) -> None:
    while True:
        try:
            progress(queue.get_nowait())
        except Empty:
            return


async def swap_schemas(
    engine: AsyncEngine, schema: str, new: str, *, keep_old: bool = False, stamp: str = ""
) -> str:
    """In ONE transaction: live ``schema`` -> ``<schema>_old_<stamp>``, ``new`` -> ``schema``.

    Returns the old schema's name (already dropped unless ``keep_old``).
    """
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
    old = f"{schema}_old_{stamp}"
    q_schema, q_new, q_old = quote_ident(schema), quote_ident(new), quote_ident(old)
    async with engine.begin() as connection:
        await connection.exec_driver_sql("SET LOCAL lock_timeout = '60s'")
        live = await connection.exec_driver_sql(
            f"SELECT to_regclass('{q_schema}.projection_checkpoints') IS NOT NULL, "
            f"EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '{schema}')"
        )
        has_checkpoints, exists = tuple(live.one())
        if has_checkpoints:
            # Waits for a live projector's batch in flight (it holds a row lock
            # here) and holds the next one until the new model is in place.
            await connection.exec_driver_sql(
                f"LOCK TABLE {q_schema}.projection_checkpoints IN ACCESS EXCLUSIVE MODE"
            )
        if exists:
            await connection.exec_driver_sql(f"ALTER SCHEMA {q_schema} RENAME TO {q_old}")
        await connection.exec_driver_sql(f"ALTER SCHEMA {q_new} RENAME TO {q_schema}")
        if exists and not keep_old:
            await connection.exec_driver_sql(f"DROP SCHEMA {q_old} CASCADE")
    log.info(
        "read models swapped: %s is the rebuilt %s%s",
        schema,
        new,
        f", old kept as {old}" if keep_old and exists else "",
    )
    return old


async def _drop_schema(engine: AsyncEngine, schema: str) -> None:
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    except Exception as exc:  # the original error matters more
        log.error("could not drop the half-built schema %s: %r", schema, exc)
