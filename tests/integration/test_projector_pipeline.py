"""The projector folds the next poll while PostgreSQL commits the one before.

What overlapping must not change: each partition's records are applied once and
in order, and a batch read or folded before its partition moved — a resync, a
failed transaction of the batch before, a revocation — is never committed.
Each test holds a transaction open (the ``before_commit`` hook) to put the
projector in exactly the state it is about.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiokafka import TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from apex.audit.verify import verify
from apex.config import Settings
from apex.kafka.event_log import EventLogReader
from apex.projections.migrate import migrate
from apex.projections.store import read_checkpoints
from benchmarks.synthetic_log import ensure_log
from streams.projector import BatchOutcome, InFlight, PreparedBatch, Projector
from tests.integration.projection_workload import snapshot, wait_caught_up

HOLD_S = 30.0
"""How long a held transaction waits for what it waits for before the test fails."""


async def synthetic_log(settings: Settings, events: int, partitions: int) -> int:
    written, _ = await ensure_log(settings, settings.topic("events"), events, partitions=partitions)
    return written


async def partition_records(settings: Settings) -> dict[int, list[Any]]:
    topic = settings.topic("events")
    records: dict[int, list[Any]] = {}
    async with EventLogReader(settings) as log:
        for partition, end in sorted((await log.end_offsets(topic)).items()):
            records[partition] = [
                rec async for batch in log.scan(topic, partition, 0, end) for rec in batch
            ]
    return records


async def one_partition_in_thirds(
    settings: Settings, engine: AsyncEngine, events: int
) -> tuple[TopicPartition, list[Any], int, tuple[list[Any], list[Any], list[Any]]]:
    """A synthetic log on one partition, a migrated schema: the partition, its records,
    the events written, and its records in three works of about a third each."""
    written = await synthetic_log(settings, events, 1)
    await migrate(engine, settings.read_model_schema)
    r0 = (await partition_records(settings))[0]
    tp = TopicPartition(settings.topic("events"), 0)
    third = len(r0) // 3
    works = ([(tp, r0[:third], None)], [(tp, r0[third : 2 * third], None)],
             [(tp, r0[2 * third :], None)])  # fmt: skip
    return tp, r0, written, works


async def two_partitions(
    settings: Settings, engine: AsyncEngine
) -> tuple[TopicPartition, TopicPartition, list[Any], list[Any]]:
    """A synthetic log on two partitions, a migrated schema: each partition and its records."""
    await synthetic_log(settings, 600, 2)
    await migrate(engine, settings.read_model_schema)
    records = await partition_records(settings)
    topic = settings.topic("events")
    return TopicPartition(topic, 0), TopicPartition(topic, 1), records[0], records[1]


async def checkpoints(engine: AsyncEngine, schema: str) -> dict[int, int]:
    async with engine.connect() as connection:
        found = await read_checkpoints(connection, schema)
    return {partition: offset for (_, partition), offset in found.items()}


async def project_until_caught_up(
    projector: Projector, settings: Settings, engine: AsyncEngine, schema: str
) -> None:
    task = asyncio.create_task(projector.run())
    try:
        await wait_caught_up(settings, engine, schema, timeout_s=60)
    finally:
        projector.stop()
        await task


async def assert_exact(settings: Settings, engine: AsyncEngine, schema: str, written: int) -> None:
    """The read models equal a fold of the log, and every event is indexed once."""
    result = await verify(settings, engine)
    assert result.differences == [] and result.events == written
    index = (await snapshot(engine, schema, ["event_index"]))["event_index"]
    assert len(index) == written


class _FoldSpy(Projector):
    """Notes a poll folded ahead while the transaction before it was open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_transactions = 0
        self.folded_while_open = asyncio.Event()

    async def prepare(self, work: Any, epochs: dict[int, int] | None = None) -> PreparedBatch:
        batch = await super().prepare(work, epochs)
        if self.open_transactions and any(
            s.folded is not None and s.folded.fresh for s in batch.shares
        ):
            self.folded_while_open.set()
        return batch

    async def commit(
        self, batch: PreparedBatch, before: InFlight | None = None
    ) -> dict[TopicPartition, BatchOutcome]:
        self.open_transactions += 1
        try:
            return await super().commit(batch, before)
        finally:
            self.open_transactions -= 1

    async def hold(self) -> None:
        """Keep this transaction open until a poll has been folded meanwhile."""
        try:
            await asyncio.wait_for(self.folded_while_open.wait(), HOLD_S)
        except TimeoutError:  # an OSError: the projector would take it for PostgreSQL's
            raise AssertionError("nothing was folded while a transaction was open") from None


async def test_the_next_poll_is_folded_while_the_transaction_before_is_open(
    apex_settings: Settings, pg_schema: str, async_engine: AsyncEngine
) -> None:
    settings = replace(apex_settings, read_model_schema=pg_schema, projector_batch=500)
    written = await synthetic_log(settings, 3_000, settings.partitions)
    await migrate(async_engine, pg_schema)
    held = 0

    async def hold_the_third(tp: TopicPartition, records: Sequence[Any]) -> None:
        nonlocal held
        held += 1
        if held == 3:  # the first batches load nothing and know their checkpoints
            await projector.hold()

    projector = _FoldSpy(settings, async_engine, before_commit=hold_the_third)
    await project_until_caught_up(projector, settings, async_engine, pg_schema)

    assert projector.folded_while_open.is_set()
    assert projector.stats.folded_ahead > 0 and projector.stats.dropped == 0
    await assert_exact(settings, async_engine, pg_schema, written)


async def test_a_failed_transaction_drops_the_batch_folded_on_it_and_ends_exact(
    apex_settings: Settings, pg_schema: str, async_engine: AsyncEngine
) -> None:
    """The batch after a failed one was folded from views that never committed: it must
    be dropped and read again, not committed on top of nothing. (One partition: the
    next poll is sure to hold the failed batch's partition.)"""
    settings = replace(
        apex_settings, read_model_schema=pg_schema, projector_batch=500, partitions=1
    )
    written = await synthetic_log(settings, 3_000, 1)
    await migrate(async_engine, pg_schema)
    calls = 0

    async def fail_once_after_the_next_is_folded(tp: TopicPartition, records: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            await projector.hold()
            raise OSError("connection to PostgreSQL lost before COMMIT (test)")

    projector = _FoldSpy(settings, async_engine, before_commit=fail_once_after_the_next_is_folded)
    await project_until_caught_up(projector, settings, async_engine, pg_schema)

    assert projector.stats.db_retries == 1
    assert projector.stats.dropped >= 1, "the batch folded on the failed one was committed"
    await assert_exact(settings, async_engine, pg_schema, written)


async def test_a_partition_revoked_while_a_batch_commits_keeps_its_checkpoint_there(
    apex_settings: Settings, pg_schema: str, async_engine: AsyncEngine
) -> None:
    """Batch 1 is in its transaction, batch 2 (both partitions) is folded and waits; the
    group revokes partition 1. The revocation waits for batch 1's COMMIT, and batch 2
    applies partition 0 only: partition 1's checkpoint stays where batch 1 left it."""
    settings = replace(apex_settings, read_model_schema=pg_schema, partitions=2)
    tp0, tp1, r0, r1 = await two_partitions(settings, async_engine)
    a0, b0, a1, b1 = len(r0) // 4, len(r0) // 2, len(r1) // 4, len(r1) // 2
    entered, go_on = asyncio.Event(), asyncio.Event()

    async def hold(tp: TopicPartition, _: Any) -> None:
        if tp == tp0 and holding:
            entered.set()
            await asyncio.wait_for(go_on.wait(), HOLD_S)

    projector = Projector(settings, async_engine, before_commit=hold)
    holding = False
    await projector.apply_many([(tp0, r0[:a0], None), (tp1, r1[:a1], None)])
    batch1 = await projector.prepare([(tp0, r0[a0:b0], None), (tp1, r1[a1:b1], None)])
    holding = True
    in_flight = asyncio.create_task(projector._commit_retrying(batch1))
    await asyncio.wait_for(entered.wait(), HOLD_S)
    holding = False
    batch2 = await projector.prepare([(tp0, r0[b0:], None), (tp1, r1[b1:], None)])
    assert all(s.folded is not None for s in batch1.shares + batch2.shares)
    revoking = asyncio.create_task(projector._release([tp1]))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not revoking.done(), "a revocation must wait for the transaction in flight"
    go_on.set()
    await in_flight
    await revoking

    outcomes = await projector.commit(batch2)

    assert outcomes[tp1].dropped and outcomes[tp1].applied == 0
    assert outcomes[tp0].applied == len(r0) - b0
    assert await checkpoints(async_engine, pg_schema) == {
        0: r0[-1].offset + 1,
        1: r1[b1 - 1].offset + 1,
    }
    async with async_engine.connect() as connection:
        indexed = (
            await connection.execute(
                text(
                    f'SELECT partition, count(*) FROM "{pg_schema}".event_index '
                    "GROUP BY partition ORDER BY partition"
                )
            )
        ).all()
    assert [tuple(row) for row in indexed] == [(0, len(r0)), (1, b1)]


async def test_a_batch_folded_on_one_that_resynced_is_dropped(
    apex_settings: Settings, pg_schema: str, async_engine: AsyncEngine
) -> None:
    """Batch 2 was folded on batch 1's views and position; batch 1 finds its checkpoint
    moved (a rebuild swapped in) and resyncs: batch 2 must not be applied from there."""
    settings = replace(apex_settings, read_model_schema=pg_schema, partitions=1)
    tp, _, _, works = await one_partition_in_thirds(settings, async_engine, 300)
    projector = Projector(settings, async_engine)
    await projector.apply_many(works[0])
    batch1 = await projector.prepare(works[1])
    batch2 = await projector.prepare(works[2])
    assert batch2.shares[0].folded is not None
    async with async_engine.begin() as connection:  # as a swapped-in rebuild that read less
        await connection.execute(
            text(f'UPDATE "{pg_schema}".projection_checkpoints SET next_offset = 5')
        )

    first = (await projector.commit(batch1))[tp]
    second = (await projector.commit(batch2))[tp]

    assert (first.resynced, first.next_offset) == (True, 5)
    assert (second.dropped, second.applied) == (True, 0)
    assert await checkpoints(async_engine, pg_schema) == {0: 5}
    assert (projector.stats.resyncs, projector.stats.dropped) == (1, 1)


async def until_a_lock_waits(engine: AsyncEngine) -> None:
    """Until a session waits in PostgreSQL for a lock another holds (a row's, here).

    Each look is a transaction of its own: PostgreSQL keeps the list of sessions
    ``pg_stat_activity`` shows for the rest of a transaction, so a session
    connected after the first look would never be seen."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND cardinality(pg_blocking_pids(pid)) > 0"
    )
    async with asyncio.timeout(HOLD_S), engine.connect() as connection:
        while True:
            waiting = (await connection.execute(query)).scalar_one()
            await connection.rollback()
            if waiting:
                return
            await asyncio.sleep(0.01)


@dataclass
class _Behind:
    """Batch 1's transaction held in its hook, batch 2's begun behind it, its lock waiting."""

    projector: Projector
    first: InFlight
    batch2: PreparedBatch
    second: asyncio.Task[None]
    go_on: asyncio.Event
    """Set it to let batch 1's transaction go on (and fail, with ``fail``)."""


async def one_behind_another(
    settings: Settings,
    engine: AsyncEngine,
    works: tuple[list[Any], list[Any], list[Any]],
    hold_on: TopicPartition,
    fail: bool = False,
) -> _Behind:
    """Apply ``works[0]``; prepare and begin ``works[1]``, held before its COMMIT (where it
    writes ``hold_on``); prepare ``works[2]`` on its fold and begin it behind it."""
    entered, go_on = asyncio.Event(), asyncio.Event()
    holding = False

    async def hold(tp: TopicPartition, _: Any) -> None:
        if tp == hold_on and holding:
            entered.set()
            await asyncio.wait_for(go_on.wait(), HOLD_S)
            if fail:
                raise RuntimeError("a bug (test)")

    projector = Projector(settings, engine, before_commit=hold)
    await projector.apply_many(works[0])
    batch1 = await projector.prepare(works[1])
    holding = True
    first = InFlight(batch1, asyncio.create_task(projector._commit_retrying(batch1)))
    await asyncio.wait_for(entered.wait(), HOLD_S)
    holding = False
    batch2 = await projector.prepare(works[2])
    second = asyncio.create_task(projector._commit_retrying(batch2, first))
    await until_a_lock_waits(engine)
    return _Behind(projector, first, batch2, second, go_on)


async def test_the_next_transaction_locks_behind_the_one_in_flight_and_applies_after_it(
    apex_settings: Settings, pg_schema: str, async_engine: AsyncEngine
) -> None:
    """Batch 2's transaction begins while batch 1's is open: its checkpoint lock waits in
    PostgreSQL for batch 1's COMMIT, it applies only after it (on batch 1's fold), and
    the log ends applied once."""
    settings = replace(apex_settings, read_model_schema=pg_schema, partitions=1)
    tp, r0, written, works = await one_partition_in_thirds(settings, async_engine, 600)
    behind = await one_behind_another(settings, async_engine, works, tp)
    batch2 = behind.batch2
    assert batch2.shares[0].folded is not None and batch2.shares[0].on is not None
    assert not batch2.locked.is_set() and not behind.second.done()

    behind.go_on.set()
    await behind.first.task
    await behind.second

    stats = behind.projector.stats
    assert (stats.dropped, stats.db_retries, stats.resyncs) == (0, 0, 0)
    assert stats.loaded_runs == 0, "batch 2 was folded again, not on batch 1's fold"
    assert await checkpoints(async_engine, pg_schema) == {0: r0[-1].offset + 1}
    await assert_exact(settings, async_engine, pg_schema, written)


async def test_a_partition_revoked_while_the_next_transaction_waits_is_dropped_by_it(
    apex_settings: Settings, pg_schema: str, async_engine: AsyncEngine
) -> None:
    """Batch 1 is in its transaction, batch 2's (both partitions) has begun behind it and
    waits for its lock; the group revokes partition 1. The revocation goes between the
    two, and batch 2 applies partition 0 only, though it locked partition 1 too."""
    settings = replace(apex_settings, read_model_schema=pg_schema, partitions=2)
    tp0, tp1, r0, r1 = await two_partitions(settings, async_engine)
    a0, b0, a1, b1 = len(r0) // 4, len(r0) // 2, len(r1) // 4, len(r1) // 2
    works = (
        [(tp0, r0[:a0], None), (tp1, r1[:a1], None)],
        [(tp0, r0[a0:b0], None), (tp1, r1[a1:b1], None)],
        [(tp0, r0[b0:], None), (tp1, r1[b1:], None)],
    )
    behind = await one_behind_another(settings, async_engine, works, tp0)
    projector, first, second, go_on = behind.projector, behind.first, behind.second, behind.go_on
    revoking = asyncio.create_task(projector._release([tp1]))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not revoking.done(), "a revocation must wait for the transaction applying"

    go_on.set()
    await asyncio.gather(first.task, revoking, second)

    assert projector.stats.dropped == 1
    assert await checkpoints(async_engine, pg_schema) == {
        0: r0[-1].offset + 1,
        1: r1[b1 - 1].offset + 1,
    }


async def test_a_transaction_that_fails_for_good_drops_the_one_begun_behind_it(
    apex_settings: Settings, pg_schema: str, async_engine: AsyncEngine
) -> None:
    """Batch 1's transaction fails with an error that is not the database's (the projector
    stops); batch 2's, begun behind it on its fold, must not apply across the gap it
    leaves: it is dropped, and the checkpoint stays where the batch before left it."""
    settings = replace(apex_settings, read_model_schema=pg_schema, partitions=1)
    tp, _, _, works = await one_partition_in_thirds(settings, async_engine, 600)
    behind = await one_behind_another(settings, async_engine, works, tp, fail=True)

    behind.go_on.set()
    failed, _ = await asyncio.gather(behind.first.task, behind.second, return_exceptions=True)

    assert isinstance(failed, RuntimeError)
    assert behind.projector.stats.dropped == 1
    first_third = works[0][0][1]
    assert await checkpoints(async_engine, pg_schema) == {0: first_third[-1].offset + 1}
