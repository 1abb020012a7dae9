"""Replaying partitions of the log into a read-model schema: the rebuild's worker side.

    counts = await replay_partitions(settings, engine, schema, topic, ends, progress)

Each partition is read from its start to ``ends[partition]`` with plain Fetch
requests (:mod:`apex.projections.log_scan`), folded in memory through
:class:`~apex.projections.rows.ViewFold` (the fold the live projector uses),
and written through the store port's bulk backend
(:class:`~apex.projections.store.CopyProjectionStore`): the event index in
binary COPY chunks while reading (:class:`~apex.projections.index_copy.IndexCopy`,
in the store's transactions), then every run, step and approval row, the
partition's definition counts and its checkpoint in one transaction.

A module of its own, apart from :mod:`apex.projections.rebuild`, because a
worker process imports it: it needs the codec, the log reader and the store,
not Alembic and the migrations (importing those cost a spawned worker about
half a second of CPU before it read a record).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from apex import codec
from apex.config import Settings
from apex.domain.state import FoldError
from apex.kafka.event_log import EventLogReader
from apex.projections import rows as r
from apex.projections.index_copy import IndexCopy, copy_index
from apex.projections.log_scan import scan_values
from apex.projections.store import CopyProjectionStore

__all__ = [
    "INDEX_CHUNK",
    "Counts",
    "fewer_collections",
    "init_worker",
    "replay_partitions",
    "taken_from",
    "worker_main",
]

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
    partitions: Iterable[int] | None = None,
) -> Counts:
    """Replay partitions of ``ends`` (each up to its end offset) into ``schema``: those
    ``partitions`` yields (default: every one), taken one at a time — a shared queue
    hands each partition to whichever process is free first."""
    store = CopyProjectionStore(engine, schema)
    totals = [0, 0, 0]
    with fewer_collections():
        async with EventLogReader(settings) as reader:
            begins = await reader.beginning_offsets(topic)
            for partition in sorted(ends) if partitions is None else partitions:
                counts = await _replay_partition(
                    store, reader, topic, partition, begins.get(partition, 0), ends[partition],
                    progress,
                )  # fmt: skip
                totals = [a + b for a, b in zip(totals, counts, strict=True)]
    return totals[0], totals[1], totals[2]


@contextmanager
def fewer_collections() -> Iterator[None]:
    """The cyclic garbage collector much less often while a replay runs.

    A replay allocates millions of objects that live until its partition is done
    (each run's view) or die by reference count at once (events); nearly none is
    part of a cycle, so collections find little, yet with the default thresholds
    (700, 10, 10) they were ~15 % of decoding and folding (measured: 19.1 against
    16.2 µs an event, 50,000 events; 15.8 with no collector at all). Cycles are
    still collected, every 100,000 allocations instead of 700.
    """
    before = gc.get_threshold()
    gc.set_threshold(*_REPLAY_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


_REPLAY_GC_THRESHOLDS = (100_000, 50, 1000)


def taken_from(work: Any) -> Iterator[int]:
    """The partitions of the shared ``work`` queue, until its end marker (``None``, put
    after every partition and left there for the next taker).

    A worker process waits for the first: the parent fills the queue once the new
    schema is ready for rows. (A ``multiprocessing`` queue's ``put`` returns before
    the item can be read: the parent, too, waits rather than asks.)
    """
    while True:
        try:
            partition = work.get(timeout=WORK_WAIT_S)
        except Empty:  # the parent is gone or stuck: it takes what is left, if it can
            return
        if partition is None:
            work.put(None)
            return
        yield partition


WORK_WAIT_S = 600.0
"""How long a taker waits for the next partition (the parent migrates first)."""


# -- in a worker process ---------------------------------------------------------------------

_PROGRESS: Any = None
_WORK: Any = None


def init_worker(progress: Any, work: Any) -> None:
    """The pool's initializer: the progress queue to the parent, the shared partition queue."""
    global _PROGRESS, _WORK
    _PROGRESS, _WORK = progress, work


def worker_main(settings: Settings, schema: str, topic: str, ends: dict[int, int]) -> Counts:
    """:func:`replay_partitions` in a worker process, on an engine of its own, of the
    partitions it takes from the shared queue."""
    partitions = taken_from(_WORK)
    first = next(partitions, None)  # waits until the schema is ready, or there is no work
    if first is None:
        return 0, 0, 0

    async def main() -> Counts:
        engine = create_async_engine(settings.sqlalchemy_url)
        try:
            return await replay_partitions(
                settings, engine, schema, topic, ends, _PROGRESS.put,
                itertools.chain((first,), partitions),
            )  # fmt: skip
        finally:
            await engine.dispose()

    return asyncio.run(main())


# -- one partition ------------------------------------------------------------------------------


async def _replay_partition(
    store: CopyProjectionStore,
    reader: EventLogReader,
    topic: str,
    partition: int,
    start: int,
    end: int,
    progress: Callable[[int], None],
) -> Counts:
    fold = r.ViewFold()
    index = IndexCopy(topic, partition)
    writing: asyncio.Task[None] | None = None
    position = start
    read = skipped = 0
    apply, add_index, decode = fold.apply, index.add, codec.decode_event
    async for offsets, values in scan_values(reader, topic, partition, start, end):
        for offset, value in zip(offsets, values, strict=True):
            try:
                event = decode(value)
                if event.seq == 0:
                    continue
                applied = apply(event)
            except (codec.CodecError, FoldError) as exc:
                skipped += 1
                log.warning("%s[%d]@%d skipped: %s", topic, partition, offset, exc)
                continue
            if applied:
                add_index(event, offset)
        read += len(offsets)
        progress(offsets[-1] + 1 - position)
        position = offsets[-1] + 1
        if len(index) >= INDEX_CHUNK:
            if writing is not None:
                await writing  # one COPY in flight while the next chunk is folded
            writing = asyncio.create_task(_write_index(store, index.take()))
    if writing is not None:
        await writing
    progress(max(0, end - position))
    views = fold.freeze()
    changes = r.changes_between({}, views)
    async with store.transaction() as unit:
        locked = await unit.lock_checkpoint(topic, partition)
        await unit.write(changes)
        await index.copy_into(await _driver(unit), store.schema)
        await unit.advance(topic, partition, locked, end)
    return read, len(views), skipped


async def _write_index(store: CopyProjectionStore, data: bytes) -> None:
    async with store.transaction() as unit:
        await copy_index(await _driver(unit), store.schema, data)


async def _driver(unit: Any) -> Any:
    """The asyncpg connection under a store unit (its transaction is the driver's own)."""
    raw = await unit.connection.get_raw_connection()
    return raw.driver_connection
