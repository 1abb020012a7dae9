"""The projection store: one port, two PostgreSQL backends (STYLE §2).

A projector applies a batch of events in one :meth:`ProjectionStore.transaction`:

    async with store.transaction() as unit:
        next_offset = await unit.lock_checkpoint(topic, partition)  # SELECT ... FOR UPDATE
        ... skip what is below next_offset, fold the rest ...
        await unit.write(changes)
        await unit.advance(topic, partition, next_offset, new_next_offset)
    # COMMIT: the rows and the checkpoint, or neither

The checkpoint row is the only truth of how far a projection got (invariant 4,
as ``eventsourcing``'s tracking table and Marten's projection progression): it
is written in the transaction that writes the rows it accounts for, and a
batch holds its row lock, so two projectors that both believe they own a
partition (a rebalance, a zombie) apply one after the other and the second
sees the first's position. :meth:`ProjectionUnit.advance` refuses to move a
checkpoint the unit did not lock or to move it backwards, the way Marten throws
on a position mismatch.

The backends differ only in how rows reach the tables:

* :class:`StatementProjectionStore` — one multi-row ``INSERT ... SELECT FROM
  unnest(<one array per column>) ON CONFLICT DO UPDATE`` per table: one round
  trip per table whatever the batch size. Low fixed cost: the live projector's
  small, frequent batches.
* :class:`CopyProjectionStore` — ``COPY`` (binary) into the tables, through a
  temporary table and one ``INSERT ... SELECT ... ON CONFLICT`` merge for the
  upserted ones. High throughput: the bulk rebuild (DESIGN facts: COPY is 86k
  rows/s in batches of 1,000 and 132k in batches of 10,000; row-per-commit 2.1k).

Both insert ``event_index`` rows without ``ON CONFLICT``: an event applied twice
fails on the primary key and rolls its batch back rather than being absorbed.
``tests/integration/test_projection_store.py`` runs one contract on both.

Connections come from a SQLAlchemy ``AsyncEngine`` (pool, transaction); the
writes use the asyncpg driver connection inside that same transaction, since
``executemany``/``COPY`` are where the throughput is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, Protocol

import asyncpg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from apex.jsonvalue import dumps_canonical
from apex.projections import rows as r
from apex.projections.schema import (
    TABLES,
    in_schema,
    projection_checkpoints,
    quote_ident,
)

__all__ = [
    "PROJECTION",
    "CheckpointError",
    "CopyProjectionStore",
    "EventAppliedTwice",
    "ProjectionStore",
    "ProjectionUnit",
    "StatementProjectionStore",
    "read_checkpoints",
    "read_table",
]

PROJECTION = "read_models"
"""Name of the read-model projection in ``projection_checkpoints``."""


class CheckpointError(RuntimeError):
    """A checkpoint was moved without its lock, or backwards: a projector bug, never skipped."""


class EventAppliedTwice(RuntimeError):
    """An ``event_index`` row already exists: the batch would apply an event a second time.

    The checkpoint normally prevents it; when it does not (a bug, a hand-edited
    checkpoint), the primary key does, and the whole transaction rolls back.
    """


class ProjectionUnit(Protocol):
    """One PostgreSQL transaction of a projection (the port)."""

    async def lock_checkpoint(self, topic: str, partition: int) -> int:
        """Lock the partition's checkpoint row (creating it at 0) and return its next offset."""
        ...

    async def lock_checkpoints(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """:meth:`lock_checkpoint` for several partitions, in one statement, in partition order."""
        ...

    async def write(self, changes: r.Changes) -> None:
        """Upsert the changed rows, insert the index rows, add the count deltas."""
        ...

    async def advance(self, topic: str, partition: int, locked: int, next_offset: int) -> None:
        """Move a checkpoint this unit locked at ``locked`` to ``next_offset``."""
        ...

    async def advance_many(self, topic: str, moves: dict[int, tuple[int, int]]) -> None:
        """:meth:`advance` for several partitions: ``{partition: (locked, next_offset)}``."""
        ...

    async def indexed(self, run_ids: Sequence[str]) -> list[tuple[str, int, str, int, int]]:
        """``(run_id, seq, topic, partition, offset)`` of the runs' indexed events, by run, seq."""
        ...


class ProjectionStore(Protocol):
    schema: str
    projection: str

    def transaction(self) -> Any:
        """``async with store.transaction() as unit``: a :class:`ProjectionUnit`."""
        ...


# -- the shared part: transactions and checkpoints ------------------------------------------


class _Unit:
    def __init__(self, store: _PostgresStore, connection: AsyncConnection, driver: Any) -> None:
        self._store = store
        self.connection = connection
        self._driver = driver
        self._locked: dict[tuple[str, int], int] = {}

    async def lock_checkpoint(self, topic: str, partition: int) -> int:
        return (await self.lock_checkpoints(topic, [partition]))[partition]

    async def lock_checkpoints(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        s = self._store
        wanted = sorted(set(partitions))  # one lock order for everyone: no deadlock
        rows = await self._driver.fetch(s.sql_lock_checkpoints, s.projection, topic, wanted)
        found = {row[0]: int(row[1]) for row in rows}
        missing = [p for p in wanted if p not in found]
        if missing:  # a partition's first batch: create its row, then lock it
            await self._driver.execute(s.sql_create_checkpoints, s.projection, topic, missing)
            rows = await self._driver.fetch(s.sql_lock_checkpoints, s.projection, topic, missing)
            found.update((row[0], int(row[1])) for row in rows)
        for partition, value in found.items():
            self._locked[(topic, partition)] = value
        return found

    async def advance(self, topic: str, partition: int, locked: int, next_offset: int) -> None:
        await self.advance_many(topic, {partition: (locked, next_offset)})

    async def advance_many(self, topic: str, moves: dict[int, tuple[int, int]]) -> None:
        s = self._store
        for partition, (locked, next_offset) in moves.items():
            where = f"checkpoint {s.projection} {topic}[{partition}]"
            if self._locked.get((topic, partition)) != locked:
                raise CheckpointError(
                    f"{where} was not locked at {locked} in this transaction "
                    f"(locked: {self._locked.get((topic, partition))})"
                )
            if next_offset < locked:
                raise CheckpointError(f"{where} cannot move back from {locked} to {next_offset}")
        if not moves:
            return
        partitions = sorted(moves)
        status = await self._driver.execute(
            s.sql_advance_checkpoints,
            s.projection,
            topic,
            partitions,
            [moves[p][0] for p in partitions],
            [moves[p][1] for p in partitions],
        )
        if status != f"UPDATE {len(moves)}":  # the row locks make this impossible: say so
            raise CheckpointError(
                f"checkpoints {s.projection} {topic}{partitions} are no longer where they were "
                f"locked ({status})"
            )
        for partition, (_, next_offset) in moves.items():
            self._locked[(topic, partition)] = next_offset

    async def indexed(self, run_ids: Sequence[str]) -> list[tuple[str, int, str, int, int]]:
        rows = await self._driver.fetch(self._store.sql_indexed, list(run_ids))
        return [(row[0], row[1], row[2], row[3], row[4]) for row in rows]

    async def write(self, changes: r.Changes) -> None:
        if not changes:
            return
        try:
            await self._store._write(self._driver, changes)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "event_index_pkey":
                raise
            raise EventAppliedTwice(
                f"{self._store.schema}.event_index already holds an event of this batch "
                f"({exc.detail}): it was applied before, yet the checkpoint did not say so"
            ) from exc


class _PostgresStore:
    """Transactions and checkpoints; subclasses say how rows are written."""

    def __init__(self, engine: AsyncEngine, schema: str, projection: str = PROJECTION) -> None:
        self.engine = engine
        self.schema = schema
        self.projection = projection
        q = quote_ident(schema)
        self.q = q
        cp = f"{q}.projection_checkpoints"
        self.sql_create_checkpoints = (
            f"INSERT INTO {cp} (projection, topic, partition, next_offset) "
            "SELECT $1, $2, p, 0 FROM unnest($3::int[]) AS p ON CONFLICT DO NOTHING"
        )
        self.sql_lock_checkpoints = (
            f"SELECT partition, next_offset FROM {cp} "
            "WHERE projection = $1 AND topic = $2 AND partition = ANY($3::int[]) "
            "ORDER BY partition FOR UPDATE"
        )
        self.sql_indexed = (
            f'SELECT run_id, seq, topic, partition, "offset" FROM {q}.event_index '
            "WHERE run_id = ANY($1::text[]) ORDER BY run_id, seq"
        )
        self.sql_advance_checkpoints = (
            f"UPDATE {cp} AS c SET next_offset = m.next_offset "
            "FROM unnest($3::int[], $4::bigint[], $5::bigint[]) "
            "AS m(partition, locked, next_offset) "
            "WHERE c.projection = $1 AND c.topic = $2 AND c.partition = m.partition "
            "AND c.next_offset = m.locked"
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Unit]:
        async with self.engine.begin() as connection:
            # The first statement through SQLAlchemy opens the transaction on
            # the driver connection the writes then use.
            await connection.exec_driver_sql("SET LOCAL lock_timeout = '60s'")
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None and driver.is_in_transaction()
            yield _Unit(self, connection, driver)

    async def _write(self, driver: Any, changes: r.Changes) -> None:
        raise NotImplementedError


class StatementProjectionStore(_PostgresStore):
    """Rows by one multi-row statement per table: the live projector's.

    Each table's rows go as column arrays into ``INSERT ... SELECT * FROM
    unnest($1::text[], $2::int8[], ...) ON CONFLICT ...``: one statement, one
    round trip and one execution per table however many rows — a batch of a
    few events costs little more than one event (``executemany`` would execute
    the statement once per row).
    """

    def __init__(self, engine: AsyncEngine, schema: str, projection: str = PROJECTION) -> None:
        super().__init__(engine, schema, projection)
        self._sql = {
            spec.table: _upsert_sql(self.q, spec, f"{self.q}.{spec.table}", _unnest(spec))
            for spec in _SPECS
        }

    async def _write(self, driver: Any, changes: r.Changes) -> None:
        for spec in _SPECS:
            rows = getattr(changes, spec.attr)
            if rows:
                columns = list(zip(*(spec.to_db(row) for row in rows), strict=True))
                await driver.execute(self._sql[spec.table], *columns)


class CopyProjectionStore(_PostgresStore):
    """Rows by binary ``COPY`` (upserts through a temporary table): the rebuild's."""

    async def _write(self, driver: Any, changes: r.Changes) -> None:
        for spec in _SPECS:
            rows = getattr(changes, spec.attr)
            if not rows:
                continue
            records = [spec.to_db(row) for row in rows]
            if spec.insert_only:
                await driver.copy_records_to_table(
                    spec.table, schema_name=self.schema, columns=spec.columns, records=records
                )
                continue
            staging = f"_apex_stage_{spec.table}"
            await driver.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {staging} "
                f"(LIKE {self.q}.{spec.table}) ON COMMIT DELETE ROWS"
            )
            await driver.copy_records_to_table(staging, columns=spec.columns, records=records)
            await driver.execute(_upsert_sql(self.q, spec, f"{self.q}.{spec.table}", staging))
            await driver.execute(f"TRUNCATE {staging}")


# -- per-table write specs ---------------------------------------------------------------------


class _Spec(NamedTuple):
    table: str
    attr: str
    """The :class:`~apex.projections.rows.Changes` field holding the rows."""
    columns: tuple[str, ...]
    key: tuple[str, ...]
    insert_only: bool
    additive: bool
    """Counts: a conflict adds the values rather than replacing them."""
    to_db: Callable[[Any], tuple[Any, ...]]


def _json(value: Any) -> str | None:
    return None if value is None else dumps_canonical(value)


def _run_to_db(row: r.RunRow) -> tuple[Any, ...]:
    return (*row[:4], _json(row.input), _json(row.outputs), *row[6:])


def _step_to_db(row: r.StepRow) -> tuple[Any, ...]:
    return (*row[:7], _json(row.output), row.error)


def _as_is(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row


_SPECS: tuple[_Spec, ...] = (
    _Spec("runs", "runs", r.RunRow._fields, ("run_id",), False, False, _run_to_db),
    _Spec("steps", "steps", r.StepRow._fields, ("run_id", "step_id"), False, False, _step_to_db),
    _Spec(
        "approvals", "approvals", r.ApprovalRow._fields, ("run_id", "step_id"), False, False, _as_is
    ),
    _Spec("event_index", "events", r.EventIndexRow._fields, ("run_id", "seq"), True, False, _as_is),
    _Spec(
        "definition_counts",
        "counts",
        r.DefinitionCountRow._fields,
        ("name", "version"),
        False,
        True,
        _as_is,
    ),
)


def _ident(column: str) -> str:
    return f'"{column}"'


def _unnest(spec: _Spec) -> str:
    """``unnest($1::text[], ...) AS s(col, ...)``: a row source from one array per column."""
    table = next(t for t in TABLES if t.name == spec.table)
    arrays = ", ".join(
        f"${i}::{_SQL_TYPES[type(column.type).__name__]}[]"
        for i, column in enumerate(table.columns, start=1)
    )
    names = ", ".join(_ident(c) for c in spec.columns)
    return f"unnest({arrays}) AS s({names})"


_SQL_TYPES = {
    "Text": "text",
    "Integer": "int4",
    "BigInteger": "int8",
    "DateTime": "timestamptz",
    "JSONB": "jsonb",
}


def _upsert_sql(q: str, spec: _Spec, target: str, source: str) -> str:
    """``INSERT INTO target SELECT ... FROM source`` (+ ``ON CONFLICT`` unless insert-only)."""
    columns = ", ".join(_ident(c) for c in spec.columns)
    sql = f"INSERT INTO {target} AS t ({columns}) SELECT {columns} FROM {source}"
    if spec.insert_only:
        return sql  # no ON CONFLICT: a repeat must fail (see module docstring)
    updated = [c for c in spec.columns if c not in spec.key]
    if spec.additive:
        sets = ", ".join(f"{_ident(c)} = t.{_ident(c)} + EXCLUDED.{_ident(c)}" for c in updated)
    else:
        sets = ", ".join(f"{_ident(c)} = EXCLUDED.{_ident(c)}" for c in updated)
    key = ", ".join(_ident(c) for c in spec.key)
    return f"{sql} ON CONFLICT ({key}) DO UPDATE SET {sets}"


# -- reading the tables back (verify, tests) ------------------------------------------------------


async def read_table(
    connection: AsyncConnection, schema: str, table: str, where: Any = None
) -> list[tuple[Any, ...]]:
    """Every row of a read-model table, in primary-key order, as plain tuples."""
    t = next(t for t in TABLES if t.name == table)
    query = select(t).order_by(*t.primary_key.columns)
    if where is not None:
        query = query.where(where(t))
    result = await (await connection.execution_options(**in_schema(schema))).execute(query)
    return [tuple(row) for row in result]


async def read_checkpoints(
    connection: AsyncConnection, schema: str, projection: str = PROJECTION
) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> next_offset`` of a projection."""
    t = projection_checkpoints
    query = select(t.c.topic, t.c.partition, t.c.next_offset).where(t.c.projection == projection)
    result = await (await connection.execution_options(**in_schema(schema))).execute(query)
    return {(topic, partition): offset for topic, partition, offset in result}


def _check_specs(specs: Sequence[_Spec]) -> None:
    """The row tuples and the tables must agree column for column."""
    for spec in specs:
        table = next(t for t in TABLES if t.name == spec.table)
        if tuple(c.name for c in table.columns) != spec.columns:
            raise RuntimeError(
                f"{spec.table}: row fields {spec.columns} differ from the table's columns "
                f"{tuple(c.name for c in table.columns)}"
            )


_check_specs(_SPECS)
