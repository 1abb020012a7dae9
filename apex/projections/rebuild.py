"""Rebuild the read models from the log, and switch readers over atomically.

    report = await rebuild(settings, engine, on_progress=bar.update)

1. A fresh schema ``<schema>_new_<timestamp>`` is migrated to head, and the
   indexes no write of the rebuild needs are dropped (:func:`defer_indexes`):
   ``event_index``'s primary key and every non-unique index.
2. Each partition of ``apex.events`` is read from its start to the end offset
   taken when the rebuild began (the last stable offset: nothing after it can
   still be aborted), folded in memory through the same
   :class:`~apex.projections.rows.ViewFold` the live projector uses, and written
   through the same store port by its bulk backend
   (:class:`~apex.projections.store.CopyProjectionStore`): the event index in
   binary COPY chunks while reading (:mod:`apex.projections.index_copy`), then
   every run, step and approval row, the partition's definition counts and its
   checkpoint in one transaction (:mod:`apex.projections.replay`). With several
   workers, this process and spawned ones (started before the migration, so
   their start-up overlaps it) take partitions from a shared queue, biggest
   first, each as soon as it is free.
3. The dropped indexes are built again, side by side, as the migration made
   them, from the loaded rows.
4. ONE transaction locks the live checkpoints (waiting for a live projector's
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

Why the indexes wait: inserting 300,000 index rows into ``event_index``'s
primary key, in the random order of run ids, cost PostgreSQL about 2 s of CPU;
building it from the loaded table, sorting once, about a quarter of that (2
cores: that was a third of a rebuild's CPU). The primary key still holds when
the rebuild swaps in: an event indexed twice makes building it fail, and the
rebuild with it (:class:`~apex.projections.store.EventAppliedTwice`), before
the swap. Upserted tables keep their primary keys: ``ON CONFLICT`` needs them.

If anything fails before the swap, the new schema is dropped and the live one
is untouched. This is also how a new projection is added to a running system:
deploy the migration, rebuild, swap.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from apex.config import Settings
from apex.kafka.event_log import EventLogReader
from apex.projections.migrate import migrate
from apex.projections.replay import (
    Counts,
    init_worker,
    replay_partitions,
    taken_from,
    worker_main,
)
from apex.projections.schema import quote_ident
from apex.projections.store import EventAppliedTwice

__all__ = [
    "DeferredIndexes",
    "RebuildReport",
    "defer_indexes",
    "rebuild",
    "restore_indexes",
    "swap_schemas",
]

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
    async with EventLogReader(settings) as reader:
        begins = await reader.beginning_offsets(topic)
        ends = await reader.end_offsets(topic)
    report.end_offsets = ends
    total = sum(ends[p] - begins.get(p, 0) for p in ends)
    # Biggest first: the last partitions taken are the small ones, so the processes
    # finish close together.
    order = sorted(ends, key=lambda p: (begins.get(p, 0) - ends[p], p))
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if on_progress is not None:
            on_progress(done, total)

    count = _workers(settings, workers, total, len(ends))
    # Worker processes start now: their interpreter and imports (about a second of
    # CPU each) overlap the migration; they wait for partitions until it is done.
    pool = _Workers(count - 1, settings, new, topic, ends) if count > 1 else None
    try:
        await migrate(engine, new)
        try:
            deferred = await defer_indexes(engine, new)
            if pool is None:
                counts = await replay_partitions(
                    settings, engine, new, topic, ends, progress, order
                )
            else:
                counts = await pool.replay(engine, order, progress)
            report.events, report.runs, report.skipped = counts
            await restore_indexes(engine, new, deferred)
            if swap:
                await swap_schemas(engine, schema, new, keep_old=keep_old, stamp=stamp)
                report.swapped = True
        except BaseException:
            await _drop_schema(engine, new)
            raise
        finally:
            report.seconds = time.perf_counter() - started
    finally:
        if pool is not None:
            await pool.close()
    return report


PARALLEL_FROM = 200_000
"""Below this many records, starting worker processes costs more than it saves."""


def _workers(settings: Settings, workers: int | None, total: int, partitions: int) -> int:
    wanted = settings.rebuild_workers if workers is None else workers
    if wanted <= 0:
        wanted = (os.cpu_count() or 1) if total >= PARALLEL_FROM else 1
    return max(1, min(wanted, partitions))


class _Workers:
    """Worker processes (spawned: no inherited event loop) that replay the partitions they
    take from a shared queue, as this process does too (:func:`replay.taken_from`).

    A partition goes to whichever process is free first, biggest first: a worker
    that started late (its interpreter and imports) or a partition bigger than the
    others no longer leaves one process waiting for the other at the end.
    """

    def __init__(
        self, count: int, settings: Settings, schema: str, topic: str, ends: dict[int, int]
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._progress: Any = context.Queue()
        self._work: Any = context.Queue()
        self._pool = ProcessPoolExecutor(
            count, mp_context=context, initializer=init_worker,
            initargs=(self._progress, self._work),
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        self._futures: list[asyncio.Future[Counts]] = [
            loop.run_in_executor(self._pool, worker_main, settings, schema, topic, ends)
            for _ in range(count)
        ]
        self._settings, self._schema, self._topic, self._ends = settings, schema, topic, ends
        self._ended = False

    async def replay(
        self, engine: AsyncEngine, order: list[int], progress: Callable[[int], None]
    ) -> Counts:
        """Hand out the partitions (the schema is ready for rows) and replay them here too."""
        for partition in order:
            self._work.put(partition)
        self._end()
        here = asyncio.ensure_future(
            replay_partitions(
                self._settings, engine, self._schema, self._topic, self._ends, progress,
                taken_from(self._work),
            )
        )  # fmt: skip
        pending: set[asyncio.Future[Counts]] = {here, *self._futures}
        try:
            while pending:
                finished, pending = await asyncio.wait(pending, timeout=0.2)
                _drain(self._progress, progress)
                for future in finished:
                    future.result()  # the first failure ends the rebuild: close() stops the rest
        except BaseException:
            here.cancel()
            with contextlib.suppress(BaseException):
                await here
            raise
        _drain(self._progress, progress)
        results = [f.result() for f in (here, *self._futures)]
        return (
            sum(c[0] for c in results),
            sum(c[1] for c in results),
            sum(c[2] for c in results),
        )

    def _end(self) -> None:
        if not self._ended:
            self._work.put(None)
            self._ended = True

    async def close(self) -> None:
        """Take what no process has taken yet, so the workers stop; wait for them."""
        self._end()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _drain_work, self._work)
        await loop.run_in_executor(None, self._pool.shutdown)
        # Retrieved: after a failure here, a worker's own failure is not news.
        await asyncio.gather(*self._futures, return_exceptions=True)


def _drain_work(work: Any) -> None:
    """Take every partition left, up to the end marker (left for the workers)."""
    for _ in taken_from(work):
        pass


def _drain(queue: Any, progress: Callable[[int], None]) -> None:
    while True:
        try:
            progress(queue.get_nowait())
        except Empty:
            return


INSERT_ONLY_TABLES = ("event_index",)
"""Tables the rebuild writes without ``ON CONFLICT``: even their primary key can wait."""


@dataclass
class DeferredIndexes:
    """What :func:`defer_indexes` dropped, as the statements that make it again."""

    builds: list[str] = field(default_factory=list)
    """``CREATE [UNIQUE] INDEX``: independent, run side by side."""
    attaches: list[str] = field(default_factory=list)
    """``ADD CONSTRAINT ... PRIMARY KEY USING INDEX``: once the index is built."""


async def defer_indexes(engine: AsyncEngine, schema: str) -> DeferredIndexes:
    """Drop the indexes of ``schema`` that no write of the rebuild uses; return how to
    make them again (:func:`restore_indexes`) as PostgreSQL describes them
    (``pg_get_indexdef``): exactly what the migration made.
    """
    q = quote_ident(schema)
    deferred = DeferredIndexes()
    async with engine.begin() as connection:
        keys: Any = await connection.exec_driver_sql(
            "SELECT t.relname, c.conname, pg_get_indexdef(c.conindid) FROM pg_constraint c "
            "JOIN pg_class t ON t.oid = c.conrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE n.nspname = $1 AND c.contype = 'p' AND t.relname = ANY($2) "
            "ORDER BY t.relname, c.conname",
            (schema, list(INSERT_ONLY_TABLES)),
        )
        primary = [(str(row[0]), str(row[1]), str(row[2])) for row in keys]
        plain: Any = await connection.exec_driver_sql(
            "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN pg_namespace n ON n.oid = i.relnamespace "
            "WHERE n.nspname = $1 AND NOT x.indisunique ORDER BY i.relname",
            (schema,),
        )
        indexes = [(str(row[0]), str(row[1])) for row in plain]
        for table, name, definition in primary:
            table_name = f"{q}.{quote_ident(table)}"
            await connection.exec_driver_sql(
                f"ALTER TABLE {table_name} DROP CONSTRAINT {quote_ident(name)}"
            )
            deferred.builds.append(definition)  # CREATE UNIQUE INDEX <name> ON ...
            deferred.attaches.append(
                f"ALTER TABLE {table_name} ADD CONSTRAINT {quote_ident(name)} "
                f"PRIMARY KEY USING INDEX {quote_ident(name)}"
            )
        for name, definition in indexes:
            await connection.exec_driver_sql(f"DROP INDEX {q}.{quote_ident(name)}")
            deferred.builds.append(definition)
    return deferred


async def restore_indexes(engine: AsyncEngine, schema: str, deferred: DeferredIndexes) -> None:
    """Build the indexes :func:`defer_indexes` dropped, each on a connection of its own
    (side by side: the biggest alone took a second), then make the primary keys of them.
    """
    await asyncio.gather(*(_build(engine, schema, sql) for sql in deferred.builds))
    if deferred.attaches:
        async with engine.begin() as connection:
            for statement in deferred.attaches:
                await connection.exec_driver_sql(statement)


async def _build(engine: AsyncEngine, schema: str, statement: str) -> None:
    async with engine.begin() as connection:
        # The sort of a big table's index stays in memory (the default is 64 MB).
        await connection.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
        try:
            await connection.exec_driver_sql(statement)
        except IntegrityError as exc:  # a unique index: an event indexed twice
            raise EventAppliedTwice(
                f"{schema}: rebuilding the event index's primary key found an event "
                f"indexed twice ({exc.orig}): the log holds a (run, seq) twice and the "
                "rebuild was not swapped in"
            ) from exc


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
