"""Replaying partitions of the log into a read-model schema: the rebuild's worker side.

    counts = await replay_partitions(settings, engine, schema, topic, ends, progress)

Each partition is read from its start to ``ends[partition]``, folded in memory
through :class:`~apex.projections.rows.ViewFold` (the fold the live projector
uses), and written through the store port's bulk backend
(:class:`~apex.projections.store.CopyProjectionStore`): the event index in COPY
chunks while reading, then every run, step and approval row, the partition's
definition counts and its checkpoint in one transaction.

A module of its own, apart from :mod:`apex.projections.rebuild`, because a
worker process imports it: it needs the codec, the log reader and the store,
not Alembic and the migrations (importing those cost a spawned worker about
half a second of CPU before it read a record).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from apex import codec
from apex.config import Settings
from apex.domain.state import FoldError
from apex.kafka.event_log import EventLogReader
from apex.projections import rows as r
from apex.projections.store import CopyProjectionStore

__all__ = ["INDEX_CHUNK", "Counts", "init_worker", "replay_partitions", "worker_main"]

log = logging.getLogger("apex.rebuild")

INDEX_CHUNK = 20_000
"""Event-index rows per COPY while reading (DESIGN facts: COPY peaks with big batches)."""

Counts = tuple[int, int, int]
"""(events read, runs, records skipped)."""


async def replay_partitions(
    settings: Settings,
    engine: AsyncEngine,
    schema: str,
    topic: str,
    ends: dict[int, int],
    progress: Callable[[int], None],
) -> Counts:
    """Replay each partition of ``ends`` (up to its end offset) into ``schema``."""
    store = CopyProjectionStore(engine, schema)
    totals = [0, 0, 0]
    async with EventLogReader(settings, max_partition_fetch_bytes=4 * 1024 * 1024) as reader:
        for partition in sorted(ends):
            counts = await _replay_partition(
                store, reader, topic, partition, ends[partition], progress
            )
            totals = [a + b for a, b in zip(totals, counts, strict=True)]
    return totals[0], totals[1], totals[2]


# -- in a worker process ---------------------------------------------------------------------

_QUEUE: Any = None


def init_worker(queue: Any) -> None:
    """The pool's initializer: progress goes back to the parent through ``queue``."""
    global _QUEUE
    _QUEUE = queue


def worker_main(settings: Settings, schema: str, topic: str, ends: dict[int, int]) -> Counts:
    """:func:`replay_partitions` in a worker process, on an engine of its own."""

    async def main() -> Counts:
        engine = create_async_engine(settings.sqlalchemy_url)
        try:
            return await replay_partitions(settings, engine, schema, topic, ends, _QUEUE.put)
        finally:
            await engine.dispose()

    return asyncio.run(main())


# -- one partition ------------------------------------------------------------------------------


async def _replay_partition(
    store: CopyProjectionStore,
    reader: EventLogReader,
    topic: str,
    partition: int,
    end: int,
    progress: Callable[[int], None],
) -> Counts:
    fold = r.ViewFold()
    chunk: list[r.EventIndexRow] = []
    writing: asyncio.Task[None] | None = None
    position = 0
    read = skipped = 0
    apply, index_row, decode = fold.apply, r.index_row_at, codec.decode_event
    async for records in reader.scan(topic, partition, None, end):
        for rec in records:
            try:
                event = decode(rec.value)
                if event.seq == 0:
                    continue
                applied = apply(event)
            except (codec.CodecError, FoldError) as exc:
                skipped += 1
                log.warning("%s[%d]@%d skipped: %s", topic, partition, rec.offset, exc)
                continue
            if applied:
                chunk.append(index_row(event, topic, partition, rec.offset))
        read += len(records)
        progress(records[-1].offset + 1 - max(position, records[0].offset))
        position = records[-1].offset + 1
        if len(chunk) >= INDEX_CHUNK:
            if writing is not None:
                await writing  # one COPY in flight while the next chunk is folded
            writing = asyncio.create_task(_write(store, r.Changes(events=chunk)))
            chunk = []
    if writing is not None:
        await writing
    progress(max(0, end - position))
    views = fold.freeze()
    changes = r.changes_between({}, views, chunk)
    async with store.transaction() as unit:
        locked = await unit.lock_checkpoint(topic, partition)
        await unit.write(changes)
        await unit.advance(topic, partition, locked, end)
    return read, len(views), skipped


async def _write(store: CopyProjectionStore, changes: r.Changes) -> None:
    async with store.transaction() as unit:
        await unit.write(changes)
