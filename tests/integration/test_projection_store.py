"""One contract, two backends (STYLE §2): the projection store's port on PostgreSQL.

The live projector writes with :class:`StatementProjectionStore` (pipelined
statements), the rebuild with :class:`CopyProjectionStore` (COPY); every test
here runs on both, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from apex.projections import rows as r
from apex.projections.migrate import current_revision, head_revision, migrate
from apex.projections.schema import metadata
from apex.projections.store import (
    CheckpointError,
    CopyProjectionStore,
    EventAppliedTwice,
    ProjectionStore,
    StatementProjectionStore,
    read_checkpoints,
)
from benchmarks.synthetic_log import play
from tests.integration.projection_workload import snapshot

TOPIC = "t.events"


@pytest.fixture(params=[StatementProjectionStore, CopyProjectionStore], ids=["statements", "copy"])
async def store(request: Any, async_engine: AsyncEngine, pg_schema: str) -> ProjectionStore:
    await migrate(async_engine, pg_schema)
    backend: ProjectionStore = request.param(async_engine, pg_schema)
    return backend


def batch_of(scenario: str, run_id: str, partition: int = 0, first_offset: int = 0) -> r.Changes:
    """The changes of a whole synthetic run, as a projector computes them."""
    events = play(scenario, run_id)
    views = r.fold_views(events)
    index = [r.index_row_at(e, TOPIC, partition, first_offset + i) for i, e in enumerate(events)]
    return r.changes_between({}, views, index)


async def test_the_migration_creates_what_the_metadata_describes(
    async_engine: AsyncEngine, pg_schema: str
) -> None:
    await migrate(async_engine, pg_schema)

    def diff(connection: Any) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={"include_schemas": False, "compare_type": True},
        )
        return compare_metadata(context, metadata)

    async with async_engine.connect() as connection:  # search_path is pg_schema only
        differences = [
            d for d in await connection.run_sync(diff) if "alembic_version" not in str(d)
        ]
    assert differences == []
    assert await current_revision(async_engine, pg_schema) == head_revision()


async def test_a_new_checkpoint_starts_at_zero_and_moves_with_its_transaction(
    store: ProjectionStore,
) -> None:
    async with store.transaction() as unit:
        assert await unit.lock_checkpoint(TOPIC, 0) == 0
        await unit.advance(TOPIC, 0, 0, 42)
    async with store.transaction() as unit:
        assert await unit.lock_checkpoint(TOPIC, 0) == 42
        assert await unit.lock_checkpoint(TOPIC, 1) == 0


async def test_rows_and_checkpoint_commit_together_or_not_at_all(store: ProjectionStore) -> None:
    changes = batch_of("ok", "run-1")
    with pytest.raises(RuntimeError, match="dies"):
        async with store.transaction() as unit:
            locked = await unit.lock_checkpoint(TOPIC, 0)
            await unit.write(changes)
            await unit.advance(TOPIC, 0, locked, 23)
            raise RuntimeError("the process dies before COMMIT")
    empty = await snapshot(store.engine, store.schema)  # type: ignore[attr-defined]
    assert all(not rows for name, rows in empty.items() if name != "projection_checkpoints")
    async with store.engine.connect() as connection:  # type: ignore[attr-defined]
        assert await read_checkpoints(connection, store.schema) in ({}, {(TOPIC, 0): 0})


async def test_written_rows_read_back_equal(store: ProjectionStore) -> None:
    changes = batch_of("approved", "run-1")
    async with store.transaction() as unit:
        locked = await unit.lock_checkpoint(TOPIC, 0)
        await unit.write(changes)
        await unit.advance(TOPIC, 0, locked, len(changes.events))

    tables = await snapshot(store.engine, store.schema)  # type: ignore[attr-defined]
    assert tables["runs"] == [tuple(r.read_back(row)) for row in changes.runs]
    assert tables["steps"] == sorted(tuple(r.read_back(row)) for row in changes.steps)
    assert tables["approvals"] == [tuple(r.read_back(row)) for row in changes.approvals]
    assert tables["event_index"] == [tuple(r.read_back(row)) for row in changes.events]
    assert tables["definition_counts"] == [tuple(row) for row in changes.counts]


async def test_rows_and_checkpoints_written_together_read_back_equal(
    store: ProjectionStore,
) -> None:
    """``write_and_advance`` (the live projector's one round trip) is write + advance."""
    first, second = batch_of("approved", "run-1"), batch_of("ok", "run-2", partition=1)
    async with store.transaction() as unit:
        locked = await unit.lock_checkpoints(TOPIC, [0, 1])
        both = r.Changes()
        both.extend(first)
        both.extend(second)
        await unit.write_and_advance(both, TOPIC, {0: (locked[0], 30), 1: (locked[1], 7)})
        # The unit knows where it moved them: a second move starts from there.
        await unit.advance_many(TOPIC, {0: (30, 31)})

    tables = await snapshot(store.engine, store.schema)  # type: ignore[attr-defined]
    assert tables["runs"] == sorted(tuple(r.read_back(row)) for row in both.runs)
    assert tables["event_index"] == sorted(tuple(r.read_back(row)) for row in both.events)
    assert tables["definition_counts"] == [tuple(row) for row in both.counts]
    async with store.engine.connect() as connection:  # type: ignore[attr-defined]
        assert await read_checkpoints(connection, store.schema) == {(TOPIC, 0): 31, (TOPIC, 1): 7}


async def test_rows_and_checkpoints_are_refused_together(store: ProjectionStore) -> None:
    changes = batch_of("ok", "run-1")
    async with store.transaction() as unit:
        with pytest.raises(CheckpointError, match="not locked"):
            await unit.write_and_advance(changes, TOPIC, {0: (0, 5)})
    async with store.transaction() as unit:
        await unit.write(changes)
    with pytest.raises(EventAppliedTwice):
        async with store.transaction() as unit:
            locked = await unit.lock_checkpoint(TOPIC, 0)
            await unit.write_and_advance(
                r.Changes(events=changes.events[-1:]), TOPIC, {0: (locked, 99)}
            )
    async with store.transaction() as unit:
        assert await unit.lock_checkpoint(TOPIC, 0) == 0, "the checkpoint rolled back too"


@pytest.mark.parametrize("at_ms", [-62_135_596_800_001, 253_402_300_800_000])
async def test_a_time_no_datetime_holds_is_refused_and_rolls_back(
    store: ProjectionStore, at_ms: int
) -> None:
    # Years 1 to 9999: what rows read back into Python hold (timestamptz holds more).
    changes = batch_of("approved", "run-1")
    changes.approvals = [row._replace(deadline_at=at_ms) for row in changes.approvals]
    with pytest.raises(OverflowError):
        async with store.transaction() as unit:
            locked = await unit.lock_checkpoint(TOPIC, 0)
            await unit.write_and_advance(changes, TOPIC, {0: (locked, len(changes.events))})
    async with store.transaction() as unit:
        assert await unit.lock_checkpoint(TOPIC, 0) == 0, "nothing was written"


async def test_rows_are_upserted_and_counts_added(store: ProjectionStore) -> None:
    events = play("retry", "run-1")
    half = len(events) // 2
    first = r.fold_views(events[:half])
    second = r.fold_views(events[half:], dict(first))
    for before, after in (({}, first), (first, second)):
        async with store.transaction() as unit:
            await unit.write(r.changes_between(before, after))
    async with store.transaction() as unit:
        await unit.write(batch_of("fail", "run-2"))

    tables = await snapshot(store.engine, store.schema)  # type: ignore[attr-defined]
    retried, failed = second["run-1"], r.fold_views(play("fail", "run-2"))["run-2"]
    assert tables["runs"] == [tuple(r.run_row(retried)), tuple(r.run_row(failed))]
    assert tables["steps"] == sorted(
        tuple(row) for row in r.step_rows(retried) + r.step_rows(failed)
    )
    assert tables["definition_counts"] == [tuple(row) for row in r.count_rows([retried, failed])]


async def test_an_event_applied_twice_fails_on_the_primary_key_and_rolls_back(
    store: ProjectionStore,
) -> None:
    changes = batch_of("ok", "run-1")
    async with store.transaction() as unit:
        await unit.write(changes)
    with pytest.raises(EventAppliedTwice, match=r"\(run_id, seq\)=\(run-1, 23\)"):
        async with store.transaction() as unit:
            locked = await unit.lock_checkpoint(TOPIC, 0)
            await unit.advance(TOPIC, 0, locked, 99)
            await unit.write(r.Changes(events=changes.events[-1:]))
    async with store.transaction() as unit:
        assert await unit.lock_checkpoint(TOPIC, 0) == 0, "the checkpoint rolled back too"


async def test_a_checkpoint_moves_only_under_its_lock_and_only_forward(
    store: ProjectionStore,
) -> None:
    async with store.transaction() as unit:
        with pytest.raises(CheckpointError, match="not locked"):
            await unit.advance(TOPIC, 0, 0, 5)
    async with store.transaction() as unit:
        locked = await unit.lock_checkpoint(TOPIC, 0)
        await unit.advance(TOPIC, 0, locked, 10)
        with pytest.raises(CheckpointError, match="back"):
            await unit.advance(TOPIC, 0, 10, 3)


async def test_two_projectors_on_one_partition_take_turns_on_the_checkpoint(
    store: ProjectionStore,
) -> None:
    first_locked = asyncio.Event()
    order: list[str] = []

    async def first() -> None:
        async with store.transaction() as unit:
            locked = await unit.lock_checkpoint(TOPIC, 0)
            first_locked.set()
            await asyncio.sleep(0.3)
            await unit.advance(TOPIC, 0, locked, 10)
            order.append("first commits")

    async def second() -> int:
        await first_locked.wait()
        async with store.transaction() as unit:
            seen = await unit.lock_checkpoint(TOPIC, 0)  # waits for the first's COMMIT
            order.append("second locks")
            return seen

    async with store.transaction() as unit:
        await unit.lock_checkpoint(TOPIC, 0)  # the row exists before they race
    _, seen = await asyncio.gather(first(), second())

    assert order == ["first commits", "second locks"]
    assert seen == 10


# -- values that are hard to carry -----------------------------------------------------
#
# The statement backend sends each column as one joined text (``store._joined``) and
# falls back to arrays for a batch the text cannot carry; the COPY backend sends binary
# rows. Either way, what is read back is what was written.


def odd_batch(
    run_id: str, error: str | None, correlation_id: str, worker_id: str | None
) -> r.Changes:
    """A whole run's changes, with the given run id and odd values in its text columns."""
    events = play("ok", run_id)
    views = r.fold_views(events)
    index = [r.index_row_at(e, TOPIC, 0, i) for i, e in enumerate(events)]
    changes = r.changes_between({}, views, index)
    changes.runs = [
        row._replace(error=error, correlation_id=correlation_id) for row in changes.runs
    ]
    changes.steps = [row._replace(worker_id=worker_id, error=error) for row in changes.steps]
    return changes


@pytest.mark.parametrize(
    ("run_id", "error", "correlation_id", "worker_id"),
    [
        # Joined text carries these: SQL and array-literal syntax, empty strings, NULLs.
        ("rün-1 ✓", 'NULL {"a,b"} \\ \' "', "", None),
        ("run-2", "", "NULL", ""),
        # These hold the separator or the NULL mark: the batch goes as arrays.
        ("run-3", "tab\x1fseparated", "\x1e", "\x1e"),
        ("run\x1f4", None, "c\x1ed", "w"),
    ],
    ids=["syntax", "empty-and-null-words", "control-characters", "control-in-key"],
)
async def test_odd_text_values_read_back_exactly(
    store: ProjectionStore,
    run_id: str,
    error: str | None,
    correlation_id: str,
    worker_id: str | None,
) -> None:
    changes = odd_batch(run_id, error, correlation_id, worker_id)
    async with store.transaction() as unit:
        locked = await unit.lock_checkpoint(TOPIC, 0)
        await unit.write_and_advance(changes, TOPIC, {0: (locked, len(changes.events))})

    tables = await snapshot(store.engine, store.schema)  # type: ignore[attr-defined]
    assert tables["runs"] == [tuple(r.read_back(row)) for row in changes.runs]
    assert tables["steps"] == sorted(tuple(r.read_back(row)) for row in changes.steps)
    assert tables["event_index"] == sorted(tuple(r.read_back(row)) for row in changes.events)
    assert tables["definition_counts"] == [tuple(row) for row in changes.counts]
