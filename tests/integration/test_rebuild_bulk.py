"""The rebuild's bulk paths on the real stack, each against the path it stands in for.

- ``IndexCopy`` (binary COPY built from events) loads the rows the store's COPY
  backend loads from ``rows.index_row_at``;
- the indexes a rebuild drops while loading come back as the migration made
  them, and an event indexed twice still fails on the primary key, before a swap;
- ``scan_values`` (plain Fetch requests) reads what aiokafka's committed consumer
  reads, aborted transactions and markers left out, within its bounds.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from apex.config import Settings
from apex.kafka.event_log import EventLogReader
from apex.projections import rows as r
from apex.projections.index_copy import IndexCopy
from apex.projections.log_scan import scan_values
from apex.projections.migrate import migrate
from apex.projections.rebuild import _drop_schema, defer_indexes, restore_indexes
from apex.projections.store import CopyProjectionStore, EventAppliedTwice, read_table
from benchmarks.synthetic_log import SCENARIOS, play
from tests.integration.mixed_log import write_mixed_log

TOPIC = "t.events"


def events_of_every_scenario() -> list[Any]:
    return [e for i, s in enumerate(SCENARIOS) for e in play(s, f"run-{s}-{i}")]


async def _driver(unit: Any) -> Any:
    return (await unit.connection.get_raw_connection()).driver_connection


async def index_rows(engine: AsyncEngine, schema: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        return await read_table(connection, schema, "event_index")


async def test_index_copy_loads_the_rows_the_store_loads(
    async_engine: AsyncEngine, pg_schema: str
) -> None:
    events = events_of_every_scenario()
    other = f"{pg_schema}_b"
    try:
        for schema in (pg_schema, other):
            await migrate(async_engine, schema)
        by_store = CopyProjectionStore(async_engine, pg_schema)
        rows = [r.index_row_at(e, TOPIC, 2, 10 + 3 * i) for i, e in enumerate(events)]
        async with by_store.transaction() as unit:
            await unit.write(r.Changes(events=rows))
        index = IndexCopy(TOPIC, 2)
        for i, e in enumerate(events):
            index.add(e, 10 + 3 * i)
        async with CopyProjectionStore(async_engine, other).transaction() as unit:
            await index.copy_into(await _driver(unit), other)

        stored = await index_rows(async_engine, pg_schema)
        assert len(stored) == len(events)
        assert await index_rows(async_engine, other) == stored
    finally:
        await _drop_schema(async_engine, other)


async def _index_definitions(engine: AsyncEngine, schema: str) -> set[tuple[str, str, str]]:
    """Every index and constraint of ``schema``: (table, name, definition)."""
    async with engine.connect() as connection:
        indexes = await connection.exec_driver_sql(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = $1",
            (schema,),
        )
        found = {(t, i, d.replace(f"{schema}.", "<schema>.")) for t, i, d in indexes}
        constraints = await connection.exec_driver_sql(
            "SELECT t.relname, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_class t ON t.oid = c.conrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = $1",
            (schema,),
        )
        return found | {(t, f"constraint {c}", d) for t, c, d in constraints}


async def test_deferred_indexes_come_back_as_the_migration_made_them(
    async_engine: AsyncEngine, pg_schema: str
) -> None:
    await migrate(async_engine, pg_schema)
    migrated = await _index_definitions(async_engine, pg_schema)

    restore = await defer_indexes(async_engine, pg_schema)
    loading = await _index_definitions(async_engine, pg_schema)
    await restore_indexes(async_engine, pg_schema, restore)

    assert await _index_definitions(async_engine, pg_schema) == migrated
    gone = {name for _, name, _ in migrated - loading}
    assert {
        "event_index_pkey",
        "constraint event_index_pkey",
        "event_index_occurred_at",
        "runs_status_started",
    } <= gone
    # What an upsert needs stays while loading.
    assert {"runs_pkey", "steps_pkey", "approvals_pkey", "projection_checkpoints_pkey"} <= {
        name for _, name, _ in loading
    }


async def test_an_event_indexed_twice_fails_when_the_primary_key_comes_back(
    async_engine: AsyncEngine, pg_schema: str
) -> None:
    await migrate(async_engine, pg_schema)
    restore = await defer_indexes(async_engine, pg_schema)
    event = play("ok", "run-twice")[0]
    index = IndexCopy(TOPIC, 0)
    index.add(event, 0)
    index.add(event, 1)  # the same (run, seq) at another offset
    async with CopyProjectionStore(async_engine, pg_schema).transaction() as unit:
        await index.copy_into(await _driver(unit), pg_schema)

    with pytest.raises(EventAppliedTwice, match="indexed twice"):
        await restore_indexes(async_engine, pg_schema, restore)


async def _scan(
    reader: EventLogReader, topic: str, start: int, end: int, fetch_bytes: int
) -> list[tuple[int, bytes]]:
    found: list[tuple[int, bytes]] = []
    async for offsets, values in scan_values(reader, topic, 0, start, end, fetch_bytes=fetch_bytes):
        found.extend(zip(offsets, values, strict=True))
    return found


async def test_a_scan_reads_the_committed_records_of_its_range(apex_settings: Settings) -> None:
    topic, everything = await write_mixed_log(apex_settings)
    async with EventLogReader(apex_settings) as reader:
        end = (await reader.end_offsets(topic))[0]
        for fetch_bytes in (1, 4 * 1024 * 1024):  # a batch a request, or all at once
            assert await _scan(reader, topic, 0, end, fetch_bytes) == everything
            # Bounds: from inside the aborted transaction, to before the last record.
            middle = everything[2][0] + 2
            last = everything[-1][0]
            expected = [(o, v) for o, v in everything if middle <= o < last]
            assert await _scan(reader, topic, middle, last, fetch_bytes) == expected
            assert await _scan(reader, topic, end, end, fetch_bytes) == []
