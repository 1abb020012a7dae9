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

* :class:`StatementProjectionStore` — a multi-row ``INSERT ... SELECT FROM
  unnest(<one array per column>) ON CONFLICT DO UPDATE`` per table, every
  table's a CTE of ONE statement: one round trip whatever the batch size and
  however many tables it touches; each column travels as one joined text that
  ``string_to_array`` splits (cheaper to encode than an array, see
  ``_joined``). Low fixed cost: the live projector's small, frequent batches.
* :class:`CopyProjectionStore` — ``COPY`` (binary) into the tables, through a
  temporary table and one ``INSERT ... SELECT ... ON CONFLICT`` merge for the
  upserted ones. High throughput: the bulk rebuild (DESIGN facts: COPY is 86k
  rows/s in batches of 1,000 and 132k in batches of 10,000; row-per-commit 2.1k).

Both insert ``event_index`` rows without ``ON CONFLICT``: an event applied twice
fails on the primary key and rolls its batch back rather than being absorbed.
``tests/integration/test_projection_store.py`` runs one contract on both.

Connections come from a SQLAlchemy ``AsyncEngine``'s pool; the transaction and
every statement of it are the asyncpg driver connection's own (``BEGIN`` with
the lock timeout in one round trip, ``COPY`` and array parameters where the
throughput is): a live projector's transaction is four round trips — BEGIN,
lock, rows with checkpoints (:meth:`ProjectionUnit.write_and_advance`), COMMIT
— and on this 2-core machine each one costs more CPU than building a batch's
rows (py-spy: a loopback send wakes PostgreSQL on the sender's time).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
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

    async def write_and_advance(
        self, changes: r.Changes, topic: str, moves: dict[int, tuple[int, int]]
    ) -> None:
        """:meth:`write` then :meth:`advance_many`, in as few round trips as the backend can."""
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
        self._check_moves(topic, moves)
        if not moves:
            return
        s = self._store
        partitions = sorted(moves)
        status = await self._driver.execute(
            s.sql_advance_checkpoints, s.projection, topic, *_move_arrays(moves, partitions)
        )
        self._moved(topic, moves, int(status.split()[-1]))

    async def write_and_advance(
        self, changes: r.Changes, topic: str, moves: dict[int, tuple[int, int]]
    ) -> None:
        self._check_moves(topic, moves)  # before anything is written, on every backend
        store = self._store
        if not isinstance(store, StatementProjectionStore) or not changes or not moves:
            await self.write(changes)
            await self.advance_many(topic, moves)
            return
        with self._applied_twice():
            moved = await store._write_advancing(self._driver, changes, topic, moves)
        self._moved(topic, moves, moved)

    def _check_moves(self, topic: str, moves: dict[int, tuple[int, int]]) -> None:
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

    def _moved(self, topic: str, moves: dict[int, tuple[int, int]], updated: int) -> None:
        if updated != len(moves):  # the row locks make this impossible: say so
            raise CheckpointError(
                f"checkpoints {self._store.projection} {topic}{sorted(moves)} are no longer "
                f"where they were locked ({updated} of {len(moves)} moved)"
            )
        for partition, (_, next_offset) in moves.items():
            self._locked[(topic, partition)] = next_offset

    async def indexed(self, run_ids: Sequence[str]) -> list[tuple[str, int, str, int, int]]:
        rows = await self._driver.fetch(self._store.sql_indexed, list(run_ids))
        return [(row[0], row[1], row[2], row[3], row[4]) for row in rows]

    async def write(self, changes: r.Changes) -> None:
        if not changes:
            return
        with self._applied_twice():
            await self._store._write(self._driver, changes)

    @contextmanager
    def _applied_twice(self) -> Iterator[None]:
        try:
            yield
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "event_index_pkey":
                raise
            raise EventAppliedTwice(
                f"{self._store.schema}.event_index already holds an event of this batch "
                f"({exc.detail}): it was applied before, yet the checkpoint did not say so"
            ) from exc


def _advance_sql(checkpoints: str, first: int = 1) -> str:
    """Move checkpoints still at their locked offsets; parameters from ``first``: projection,
    topic, partitions, locked offsets, next offsets."""
    a, b, c, d, e = (f"${i}" for i in range(first, first + 5))
    return (
        f"UPDATE {checkpoints} AS c SET next_offset = m.next_offset "
        f"FROM unnest({c}::int[], {d}::bigint[], {e}::bigint[]) "
        "AS m(partition, locked, next_offset) "
        f"WHERE c.projection = {a} AND c.topic = {b} AND c.partition = m.partition "
        "AND c.next_offset = m.locked"
    )


def _move_arrays(
    moves: dict[int, tuple[int, int]], partitions: list[int]
) -> tuple[list[int], list[int], list[int]]:
    """``(partitions, locked offsets, next offsets)``: the advance statement's arrays."""
    return partitions, [moves[p][0] for p in partitions], [moves[p][1] for p in partitions]


_BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '60s'"
"""A swap holding the checkpoints (a rebuild) is waited for, not forever."""


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
        self.sql_advance_checkpoints = _advance_sql(cp)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Unit]:
        # The transaction is the driver's own, not SQLAlchemy's: BEGIN and the
        # lock timeout go in one round trip (SQLAlchemy would spend two, and a
        # greenlet hop per statement) — the live projector pays this per poll.
        # SQLAlchemy still owns the pooled connection; its reset on return is a
        # no-op since it never began a transaction of its own.
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None and not driver.is_in_transaction()
            try:
                # Inside the try: a task cancelled while BEGIN is in flight (the
                # projector's next transaction, when the one before fails) must
                # roll back too, or its connection goes back to the pool inside a
                # transaction (SQLAlchemy's reset knows nothing of this BEGIN).
                await driver.execute(_BEGIN)
                yield _Unit(self, connection, driver)
            except BaseException:
                try:
                    await driver.execute("ROLLBACK")
                except BaseException:  # the connection is gone: never pool it again
                    await connection.invalidate()
                raise
            try:
                await driver.execute("COMMIT")
            except BaseException:  # whatever state it is in, it is not one to pool
                await connection.invalidate()
                raise

    async def _write(self, driver: Any, changes: r.Changes) -> None:
        raise NotImplementedError


class StatementProjectionStore(_PostgresStore):
    """Rows by ONE statement for every table: the live projector's.

    Each table's rows go as column arrays into ``INSERT ... SELECT * FROM
    unnest($1::text[], $2::int8[], ...) ON CONFLICT ...`` (each array sent as
    one joined text and split by ``string_to_array``: :func:`_joined`), and the
    tables' inserts are data-modifying CTEs of one statement: one round trip and
    one execution however many rows and tables — a batch of a few events costs
    little more than one event (``executemany`` would execute once per row, a
    statement per table would wait for five round trips). A table without rows
    gets empty arrays: an insert of nothing.
    """

    def __init__(self, engine: AsyncEngine, schema: str, projection: str = PROJECTION) -> None:
        super().__init__(engine, schema, projection)
        # Two forms of the same statement: columns as joined text (the usual one,
        # see _joined) or as arrays (a batch with a value the text cannot carry).
        self._sql: dict[bool, str] = {}
        self._sql_advancing: dict[bool, str] = {}
        for joined in (True, False):
            parts, first = [], 1
            for spec in _SPECS:
                source = _unnest(spec, first, joined)
                upsert = _upsert_sql(self.q, spec, f"{self.q}.{spec.table}", source, _from_ms(spec))
                parts.append(f"w_{spec.table} AS ({upsert})")
                first += len(spec.columns)
            self._sql[joined] = f"WITH {', '.join(parts)} SELECT 1"
            # The same, plus the checkpoints' advance: rows and checkpoints in one round trip.
            advance = _advance_sql(f"{self.q}.projection_checkpoints", first)
            self._sql_advancing[joined] = (
                f"WITH {', '.join(parts)}, moved AS ({advance} RETURNING 1) "
                "SELECT count(*) FROM moved"
            )
        self._empty: dict[str, list[list[Any]]] = {
            spec.attr: [[]] * len(spec.columns) for spec in _SPECS
        }

    async def _write(self, driver: Any, changes: r.Changes) -> None:
        joined, params = self._params(changes)
        await driver.execute(self._sql[joined], *params)

    async def _write_advancing(
        self, driver: Any, changes: r.Changes, topic: str, moves: dict[int, tuple[int, int]]
    ) -> int:
        """Rows and checkpoints in one statement; how many checkpoints moved."""
        joined, params = self._params(changes)
        moved: int = await driver.fetchval(
            self._sql_advancing[joined],
            *params,
            self.projection,
            topic,
            *_move_arrays(moves, sorted(moves)),
        )
        return moved

    def _params(self, changes: r.Changes) -> tuple[bool, list[Any]]:
        """Each column as one text (``True``), or, if a value cannot be joined, as an array."""
        columns = self._columns(changes)
        texts = []
        for values, text in zip(columns, _TEXT_COLUMNS, strict=True):
            joined = _joined(values, text)
            if joined is None:
                return False, [list(values) for values in columns]
            texts.append(joined)
        return True, texts

    def _columns(self, changes: r.Changes) -> list[Sequence[Any]]:
        columns: list[Sequence[Any]] = []
        for spec in _SPECS:
            rows = getattr(changes, spec.attr)
            if rows:
                values = rows if spec.to_db is _as_is else map(spec.to_db, rows)
                table: list[Any] = list(zip(*values, strict=True))
                for i in spec.times:
                    _check_times(spec.table, spec.columns[i], table[i])
                columns.extend(table)
            else:
                columns.extend(self._empty[spec.attr])
        return columns


class CopyProjectionStore(_PostgresStore):
    """Rows by binary ``COPY`` (upserts through a temporary table): the rebuild's."""

    async def _write(self, driver: Any, changes: r.Changes) -> None:
        for spec in _SPECS:
            rows = getattr(changes, spec.attr)
            if not rows:
                continue
            records = [_with_datetimes(spec, row) for row in rows]
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
    times: tuple[int, ...] = ()
    """Positions of the ``timestamptz`` columns (set from the tables below)."""


def _check_times(table: str, column: str, values: Sequence[int | None]) -> None:
    """Row times (epoch milliseconds) must be times a ``datetime`` holds, years 1 to 9999.

    The statement backend sends them as they are, as ``int8`` (asyncpg encodes a
    ``timestamptz`` array element at about 1.9 µs of CPU, an ``int8`` at 0.6 µs),
    and PostgreSQL turns them into ``timestamptz`` exactly (:func:`_from_ms`),
    which would take years up to 294276 and leave rows nobody can read back into
    Python. Refused with the error the COPY backend meets building their
    ``datetime`` (:func:`~apex.projections.rows.from_ms`).
    """
    # filter(None, ...) drops 0 too: a time in range.
    if (
        min(filter(None, values), default=0) < _MIN_MS
        or max(filter(None, values), default=0) > _MAX_MS
    ):
        wrong = next(v for v in values if v is not None and not _MIN_MS <= v <= _MAX_MS)
        raise OverflowError(f"{table}.{column}: time {wrong} ms is outside the years 1 to 9999")


_MIN_MS = -62_135_596_800_000
_MAX_MS = 253_402_300_799_999
"""Epoch milliseconds of 0001-01-01 and of the last millisecond of 9999."""


def _with_datetimes(spec: _Spec, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row's values for binary ``COPY``: its times as ``datetime`` (asyncpg's codec)."""
    values = list(spec.to_db(row))
    for i in spec.times:
        values[i] = r.from_ms(values[i])
    return tuple(values)


def _json(value: Any) -> str | None:
    """Canonical JSON text of a JSON value, remembered by identity.

    The live projector writes a run's row again with every batch that touches
    the run, with the same ``input`` object each time (the state carries the
    RunStarted's value along): serialising it again was about a third of
    turning rows into parameters (micro-benchmark, ~9 -> ~6 µs an event).
    The memo holds the value itself, so its ``id`` cannot be reused while the
    entry lives; the domain never mutates a JSON value in place.
    """
    if value is None:
        return None
    hit = _JSON_MEMO.get(id(value))
    if hit is not None and hit[0] is value:
        return hit[1]
    text = dumps_canonical(value)
    if len(_JSON_MEMO) >= _JSON_MEMO_SIZE:
        _JSON_MEMO.clear()  # bounded, and cheap: a few runs are serialised again
    _JSON_MEMO[id(value)] = (value, text)
    return text


_JSON_MEMO: dict[int, tuple[Any, str]] = {}
_JSON_MEMO_SIZE = 8192


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


def _with_times(spec: _Spec) -> _Spec:
    table = next(t for t in TABLES if t.name == spec.table)
    times = tuple(
        i for i, column in enumerate(table.columns) if type(column.type).__name__ == "DateTime"
    )
    return spec._replace(times=times)


_SPECS = tuple(_with_times(spec) for spec in _SPECS)

_TEXT_COLUMNS: tuple[bool, ...] = tuple(
    type(column.type).__name__ in ("Text", "JSONB")
    for spec in _SPECS
    for column in next(t for t in TABLES if t.name == spec.table).columns
)
"""For each parameter column of the statement backend, in order: text (or JSON text)?"""


def _ident(column: str) -> str:
    return f'"{column}"'


def _unnest(spec: _Spec, first: int = 1, joined: bool = False) -> str:
    """``unnest($1::text[], ...) AS s(col, ...)``: a row source from one array per column
    (parameters numbered from ``first``); ``joined``: from one text per column
    (:func:`_joined`), split by ``string_to_array``."""
    table = next(t for t in TABLES if t.name == spec.table)
    if joined:
        arrays = ", ".join(
            f"string_to_array(${i}::text, {_SQL_SEPARATOR}, {_SQL_NULL})"
            f"::{_SQL_TYPES[type(column.type).__name__]}[]"
            for i, column in enumerate(table.columns, start=first)
        )
    else:
        arrays = ", ".join(
            f"${i}::{_SQL_TYPES[type(column.type).__name__]}[]"
            for i, column in enumerate(table.columns, start=first)
        )
    names = ", ".join(_ident(c) for c in spec.columns)
    return f"unnest({arrays}) AS s({names})"


_SEPARATOR = "\x1f"
_NULL = "\x1e"
_SQL_SEPARATOR = "E'\\x1f'"
_SQL_NULL = "E'\\x1e'"


def _joined(values: Sequence[Any], text: bool) -> str | None:
    """A column's values (``text``: strings, JSON text; else integers; ``None`` for NULL)
    as one text: joined by the unit separator, NULL as the record separator, for
    ``string_to_array(text, E'\\x1f', E'\\x1e')`` to split in PostgreSQL.

    asyncpg encodes an array parameter element by element, with three ABC
    ``isinstance`` checks per element to tell a nested array: turning a batch's
    rows into parameters was about a fifth of the live projector's CPU (py-spy);
    one ``str.join`` per column costs a small part of that. ``None`` when the text
    cannot say it: a value holding either control character, or one empty string
    alone (``string_to_array('')`` is the empty array) — then the batch goes as
    arrays. JSON text never holds them raw (JSON escapes control characters).
    """
    if not values:
        return ""
    nulls = values.count(None)
    if not text:  # digits and a minus sign: nothing to check
        if nulls:
            return _SEPARATOR.join([_NULL if v is None else str(v) for v in values])
        return _SEPARATOR.join(map(str, values))
    if nulls:
        values = [_NULL if v is None else v for v in values]
    try:
        joined = _SEPARATOR.join(values)
    except TypeError:  # not text after all: the array codec will say what it is
        return None
    if joined.count(_SEPARATOR) != len(values) - 1 or joined.count(_NULL) != nulls:
        return None
    return joined or None


_SQL_TYPES = {
    "Text": "text",
    "Integer": "int4",
    "BigInteger": "int8",
    "DateTime": "int8",  # epoch milliseconds, as the rows hold them: see _from_ms
    "JSONB": "jsonb",
}


def _from_ms(spec: _Spec) -> str:
    """The select list turning the ``int8`` epoch milliseconds of the time columns back
    into ``timestamptz`` — exactly: an interval times an integer below 2^53 is integer
    microseconds, and adding a time-only interval involves no time zone."""
    return ", ".join(
        f"'epoch'::timestamptz + {_ident(c)} * interval '1 millisecond'"
        if i in spec.times
        else _ident(c)
        for i, c in enumerate(spec.columns)
    )


def _upsert_sql(q: str, spec: _Spec, target: str, source: str, select: str = "") -> str:
    """``INSERT INTO target SELECT ... FROM source`` (+ ``ON CONFLICT`` unless insert-only)."""
    columns = ", ".join(_ident(c) for c in spec.columns)
    sql = f"INSERT INTO {target} AS t ({columns}) SELECT {select or columns} FROM {source}"
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
    """The row tuples and the tables must agree column for column, times included."""
    for spec in specs:
        table = next(t for t in TABLES if t.name == spec.table)
        if tuple(c.name for c in table.columns) != spec.columns:
            raise RuntimeError(
                f"{spec.table}: row fields {spec.columns} differ from the table's columns "
                f"{tuple(c.name for c in table.columns)}"
            )
        times = tuple(i for i, c in enumerate(spec.columns) if c.endswith("_at"))
        if times != spec.times:  # rows.py reads back the *_at fields as datetime
            raise RuntimeError(f"{spec.table}: timestamptz columns {spec.times} are not the *_at")


_check_specs(_SPECS)
