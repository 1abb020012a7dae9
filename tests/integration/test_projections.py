"""Invariants 1 and 4 on the real stack: read models rebuilt from the log alone, exactly once.

The log comes from the runtime (``projection_workload``): runs that succeed,
retry, fail, wait for approvals (granted and rejected) and get cancelled, plus
a refusal with a seq of its own and one without. A projector built the read
models while the runtime wrote it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy import text

from apex import codec
from apex.audit.verify import verify
from apex.config import Settings
from apex.kafka.event_log import EventLogReader
from apex.projections.migrate import migrate
from apex.projections.rebuild import rebuild, swap_schemas
from apex.projections.store import read_checkpoints
from streams.projector import Projector
from tests.integration.projection_workload import (
    Workload,
    assert_same_tables,
    end_offsets,
    run_workload,
    snapshot,
    wait_caught_up,
    workload,
)
from tests.integration.runtime import spawn, stop

__all__ = ["workload"]  # the session fixture, shared with test_audit


async def log_records(settings: Settings) -> list[Any]:
    """Every committed record of the events topic, partition by partition."""
    records: list[Any] = []
    async with EventLogReader(settings) as log:
        ends = await log.end_offsets(settings.topic("events"))
        for partition, end in sorted(ends.items()):
            async for batch in log.scan(settings.topic("events"), partition, None, end):
                records.extend(batch)
    return records


async def test_the_workload_gives_every_table_variety(workload: Workload) -> None:
    tables = await snapshot(workload.engine, workload.schema)
    statuses = Counter(row[3] for row in tables["runs"])
    assert statuses.keys() == {"completed", "failed", "cancelled"}, statuses
    assert {row[3] for row in tables["approvals"]} == {"granted", "rejected"}
    assert max(row[3] for row in tables["steps"]) >= 2, "no step was retried"
    assert {row[0] for row in tables["definition_counts"]} == {"triage", "fragile", "slow"}
    assert any(row[2] == "CommandRejected" for row in tables["event_index"])


async def test_rebuild_from_the_log_equals_the_incrementally_built_models(
    workload: Workload,
) -> None:
    live = await snapshot(workload.engine, workload.schema)
    progress: list[tuple[int, int]] = []

    report = await rebuild(
        workload.settings, workload.engine, on_progress=lambda d, t: progress.append((d, t))
    )

    rebuilt = await snapshot(workload.engine, workload.schema)
    assert_same_tables(rebuilt, live)
    assert report.swapped and report.skipped == 0
    assert report.runs == len(live["runs"])
    assert progress and progress[-1][0] == progress[-1][1] == sum(report.end_offsets.values())
    async with workload.engine.connect() as connection:
        leftovers = await connection.execute(
            text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :pattern"),
            {"pattern": f"{workload.schema}\\_%"},
        )
        assert leftovers.all() == [], "the old and the building schema must be gone"


async def test_rebuild_in_worker_processes_gives_the_same_tables(workload: Workload) -> None:
    schema = workload.new_schema()
    report = await rebuild(workload.settings, workload.engine, schema=schema, workers=2)

    assert report.swapped
    assert_same_tables(
        await snapshot(workload.engine, schema), await snapshot(workload.engine, workload.schema)
    )


class _Crash(Exception):
    """Stands for the process dying between writing the rows and COMMIT."""


async def crash_before_second_commit(
    settings: Settings, engine: Any, ends: dict[int, int], incarnation: int
) -> None:
    """Run a projector that commits one batch and dies before committing the second."""
    batches = 0

    async def die_on_second_batch(tp: TopicPartition, records: Sequence[Any]) -> None:
        nonlocal batches
        batches += 1
        if batches == 2:
            # Worst case for a projector trusting Kafka: the group offset is
            # already past everything, and then the process dies before COMMIT.
            assert projector._consumer is not None
            await projector._consumer.commit(
                {TopicPartition(tp.topic, p): OffsetAndMetadata(end, "") for p, end in ends.items()}
            )
            raise _Crash(f"incarnation {incarnation} dies before COMMIT")

    projector = Projector(settings, engine, before_commit=die_on_second_batch)
    with pytest.raises(_Crash):
        await asyncio.wait_for(projector.run(), timeout=30)


async def test_projector_killed_before_commit_applies_nothing_twice_and_misses_nothing(
    workload: Workload,
) -> None:
    schema = workload.new_schema()
    settings = workload.with_schema(schema, projector_batch=7)
    await migrate(workload.engine, schema)
    ends = await end_offsets(settings)
    crashes = 0

    for incarnation in range(4):
        await crash_before_second_commit(settings, workload.engine, ends, incarnation)
        crashes += 1

    survivor = Projector(settings, workload.engine)
    task = asyncio.create_task(survivor.run())
    try:
        await wait_caught_up(settings, workload.engine, schema)
    finally:
        survivor.stop()
        await task

    assert crashes == 4
    tables = await snapshot(workload.engine, schema)
    assert_same_tables(tables, await snapshot(workload.engine, workload.schema))
    in_log = [codec.decode_event(rec.value) for rec in await log_records(settings)]
    indexed = [(row[0], row[1]) for row in tables["event_index"]]
    assert sorted(indexed) == sorted((e.run_id, e.seq) for e in in_log if e.seq > 0)
    assert len(set(indexed)) == len(indexed)
    assert (await verify(settings, workload.engine)).differences == []


async def test_applying_an_old_batch_again_changes_nothing(workload: Workload) -> None:
    schema = workload.new_schema()
    settings = workload.with_schema(schema)
    await rebuild(settings, workload.engine)
    before = await snapshot(workload.engine, schema)
    topic = settings.topic("events")
    projector = Projector(settings, workload.engine)
    async with EventLogReader(settings) as log:
        ends = await log.end_offsets(topic)
        partition = max(ends, key=lambda p: ends[p])
        records = [
            rec async for batch in log.scan(topic, partition, 0, ends[partition]) for rec in batch
        ]

    whole = await projector.apply(TopicPartition(topic, partition), records)
    tail = await projector.apply(TopicPartition(topic, partition), records[len(records) // 2 :])

    assert (whole.applied, whole.skipped, whole.resynced) == (0, len(records), False)
    assert (tail.applied, tail.skipped) == (0, len(records) - len(records) // 2)
    assert_same_tables(await snapshot(workload.engine, schema), before)


async def test_a_checkpoint_moved_under_the_projector_makes_it_resync(
    workload: Workload,
) -> None:
    schema = workload.new_schema()
    settings = workload.with_schema(schema)
    await rebuild(settings, workload.engine)
    topic = settings.topic("events")
    projector = Projector(settings, workload.engine)
    async with EventLogReader(settings) as log:
        ends = await log.end_offsets(topic)
        partition = max(ends, key=lambda p: ends[p])
        records = [
            rec async for batch in log.scan(topic, partition, 0, ends[partition]) for rec in batch
        ]
    tp = TopicPartition(topic, partition)
    assert (await projector.apply(tp, records)).skipped == len(records)  # now at the end
    async with workload.engine.begin() as connection:  # as a rebuild that read less would
        await connection.execute(
            text(f'UPDATE "{schema}".projection_checkpoints SET next_offset = :o'), {"o": 5}
        )

    outcome = await projector.apply(tp, records[-3:])

    assert (outcome.resynced, outcome.next_offset, outcome.applied) == (True, 5, 0)
    assert projector.stats.resyncs == 1


async def test_live_projector_follows_a_rebuild_swapped_in_under_it(
    apex_settings: Settings, pg_schema: str, async_engine: Any
) -> None:
    from dataclasses import replace

    settings = replace(apex_settings, read_model_schema=pg_schema)
    await migrate(async_engine, pg_schema)
    projector = Projector(settings, async_engine)
    task = asyncio.create_task(projector.run())
    try:
        await run_workload(settings, runs=3)
        await wait_caught_up(settings, async_engine, pg_schema)
        # More runs while the rebuild reads the log and swaps its schema in: the
        # live projector is ahead of the rebuild's end offsets, then finds them.
        more = asyncio.create_task(run_workload(settings, runs=3))
        await asyncio.sleep(1.0)
        report = await rebuild(settings, async_engine)
        await more
        await wait_caught_up(settings, async_engine, pg_schema)
    finally:
        projector.stop()
        await task

    assert report.swapped
    result = await verify(settings, async_engine)
    assert result.differences == []
    assert result.runs == len((await snapshot(async_engine, pg_schema, ["runs"]))["runs"])


async def test_a_quiet_projector_ahead_of_a_swapped_in_rebuild_goes_back_to_it(
    apex_settings: Settings, pg_schema: str, async_engine: Any
) -> None:
    """The rebuild ends at offsets the live projector has passed, and no event comes
    after the swap: the projector must still find the rebuild's checkpoints and
    project the tail again, rather than wait for traffic that never comes."""
    from dataclasses import replace

    settings = replace(apex_settings, read_model_schema=pg_schema)
    await migrate(async_engine, pg_schema)
    projector = Projector(settings, async_engine)
    task = asyncio.create_task(projector.run())
    try:
        await run_workload(settings, runs=2)
        await wait_caught_up(settings, async_engine, pg_schema)
        report = await rebuild(settings, async_engine, swap=False)
        await run_workload(settings, runs=2)  # the tail the rebuild has not read
        ends = await wait_caught_up(settings, async_engine, pg_schema)
        assert any(ends[p] > report.end_offsets[p] for p in ends)
        await swap_schemas(async_engine, pg_schema, report.built_as)
        await wait_caught_up(settings, async_engine, pg_schema)
    finally:
        projector.stop()
        await task

    assert projector.stats.resyncs >= 1
    result = await verify(settings, async_engine)
    assert result.differences == []
    assert result.runs == len((await snapshot(async_engine, pg_schema, ["runs"]))["runs"])


async def test_projector_process_killed_with_sigkill_in_a_loop_ends_exact(
    apex_settings: Settings, pg_schema: str, async_engine: Any, tmp_path: Path
) -> None:
    """Real processes, SIGKILL while they apply batches: PostgreSQL rolls back what
    was not committed, and the next process starts from the checkpoints."""
    from dataclasses import replace

    from benchmarks.synthetic_log import ensure_log

    settings = replace(apex_settings, read_model_schema=pg_schema, projector_batch=40)
    written, _ = await ensure_log(settings, settings.topic("events"), 8_000, partitions=3)
    await migrate(async_engine, pg_schema)

    async def progress() -> int:
        async with async_engine.connect() as connection:
            return sum((await read_checkpoints(connection, pg_schema)).values())

    reached = 0
    for kill in range(2):  # each kill costs a group session timeout (6 s) before the next
        proc = spawn(settings, "projections", "run", name=f"projector-{kill}", log_dir=tmp_path)
        deadline = time.monotonic() + 40
        while await progress() < reached + 500:
            assert proc.poll() is None, (tmp_path / f"projector-{kill}.log").read_text()
            assert time.monotonic() < deadline, "the projector made no progress"
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reached = await progress()
    survivor = spawn(settings, "projections", "run", name="projector-last", log_dir=tmp_path)
    try:
        await wait_caught_up(settings, async_engine, pg_schema, timeout_s=60)
    finally:
        stop(survivor)

    assert 0 < reached < written, "every kill must land before the end"
    result = await verify(settings, async_engine)
    assert result.differences == [] and result.events == written
    tables = await snapshot(async_engine, pg_schema, ["event_index"])
    assert len(tables["event_index"]) == written


async def test_an_undecodable_event_goes_to_the_dlq_and_the_rest_is_applied(
    apex_settings: Settings, pg_schema: str, async_engine: Any
) -> None:
    from dataclasses import replace

    from apex.chain import CHAIN_HEADER, GENESIS, link
    from apex.kafka.clients import make_producer
    from apex.kafka.topology import ensure_topics
    from benchmarks.synthetic_log import play
    from tests.integration.runtime import read_dlq

    settings = replace(apex_settings, read_model_schema=pg_schema)
    await ensure_topics(settings)
    await migrate(async_engine, pg_schema)
    producer = make_producer(settings)
    await producer.start()
    try:
        chain = GENESIS
        for i, event in enumerate(play("ok", "run-1")):
            value = codec.encode_event(event)
            chain = link(chain, value)
            await producer.send_and_wait(
                settings.topic("events"),
                value,
                key=b"run-1",
                headers=[(CHAIN_HEADER, chain)],
                partition=0,
            )
            if i == 3:
                await producer.send_and_wait(
                    settings.topic("events"), b"\xc3\x01garbage", key=b"run-2", partition=0
                )
    finally:
        await producer.stop()
    projector = Projector(settings, async_engine)
    task = asyncio.create_task(projector.run())
    try:
        await wait_caught_up(settings, async_engine, pg_schema)
    finally:
        projector.stop()
        await task

    (letter,) = await read_dlq(settings)
    assert letter.value == b"\xc3\x01garbage"
    assert dict(letter.headers)["apex.dlq.stage"] == b"projector"
    runs = (await snapshot(async_engine, pg_schema, ["runs"]))["runs"]
    assert [(row[0], row[3]) for row in runs] == [("run-1", "completed")]
    report = await verify(settings, async_engine)
    assert [(d.kind, d.run_id) for d in report.differences] == [("undecodable", "run-2")]
