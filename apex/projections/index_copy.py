"""``event_index`` rows as PostgreSQL binary ``COPY`` data, built straight from events.

    index = IndexCopy(topic, partition)
    index.add(event, offset)                      # for every event folded
    await index.copy_into(driver, schema)         # an asyncpg connection, in a transaction

The rebuild's per-event write path. The store's COPY backend
(:class:`~apex.projections.store.CopyProjectionStore`) takes
:class:`~apex.projections.rows.EventIndexRow` tuples, whose ``occurred_at`` it
turns from the event's epoch milliseconds into a ``datetime`` that asyncpg
turns back into microseconds: per event, a row tuple, a ``datetime`` and its
encoding cost about 5 µs of CPU, the biggest item of a rebuild after decoding
and folding. Here a row is the bytes PostgreSQL reads, joined from parts that
repeat (a run's id, a type's name, the partition) and three packed integers:
the same values, the same table (``tests/unit/projections/test_index_copy.py``
checks the bytes against PostgreSQL's format, and
``tests/integration/test_rebuild_bulk.py`` the rows against the store's).

Binary COPY format (PostgreSQL docs, "COPY"): a signature and two 32-bit
words, then per row a 16-bit field count and per field a 32-bit length and the
value in the type's binary send format (``text``: UTF-8; ``int4``/``int8``:
big-endian; ``timestamptz``: int64 microseconds since 2000-01-01 UTC), then a
16-bit -1.
"""

from __future__ import annotations

import struct
from typing import Any

from apex.domain import events as ev
from apex.projections.rows import EventIndexRow

__all__ = ["COLUMNS", "IndexCopy", "copy_index"]

COLUMNS: tuple[str, ...] = EventIndexRow._fields
"""The ``event_index`` columns, in the order a row's fields are written."""

_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_TRAILER = b"\xff\xff"
_FIELD_COUNT = struct.pack(">h", len(COLUMNS))
_INT8_FIELD = struct.Struct(">iq")
"""A field of 8 bytes (its length, then the int64)."""
_PG_EPOCH_MS = 946_684_800_000
"""2000-01-01T00:00:00Z in Unix epoch milliseconds: where ``timestamptz`` counts from."""
_MIN_MS = -62_135_596_800_000
_MAX_MS = 253_402_300_799_999
"""The times a ``datetime`` holds (years 1 to 9999): what :func:`rows.from_ms` takes."""
_RUNS_KEPT = 1 << 16
"""Run-id prefixes remembered at most (a run's ~20 events reuse its prefix)."""


def _text(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">i", len(data)) + data


class IndexCopy:
    """The ``event_index`` rows of one partition's events, as binary COPY data."""

    __slots__ = ("_runs", "_tail", "_types", "rows")

    def __init__(self, topic: str, partition: int) -> None:
        self._runs: dict[str, bytes] = {}
        """Field count and run-id field of each run met: the first bytes of its rows."""
        self._types: dict[type, tuple[Any, bytes]] = {}
        """Per event type, the packer of the rest of a row and the type's name field."""
        self._tail = _text(topic) + struct.pack(">ii", 4, partition)
        """The topic and partition fields: the same in every row."""
        self.rows: list[bytes] = []

    def add(self, event: ev.Event, offset: int) -> None:
        """The row of ``event``, read at ``offset`` (what :func:`rows.event_index_row` gives)."""
        run_id = event.run_id
        head = self._runs.get(run_id)
        if head is None:
            if len(self._runs) >= _RUNS_KEPT:
                self._runs.clear()
            head = self._runs[run_id] = _FIELD_COUNT + _text(run_id)
        kind = type(event)
        rest = self._types.get(kind)
        if rest is None:
            rest = self._types[kind] = self._rest_of(kind)
        ms = event.occurred_at_ms
        if not _MIN_MS <= ms <= _MAX_MS:  # as rows.from_ms would, rather than a row it cannot
            raise OverflowError(f"event time {ms} ms is outside the years 1 to 9999")
        # One pack for the seq, type, time, topic, partition and offset fields.
        pack, name = rest
        self.rows.append(
            head + pack(8, event.seq, name, 8, (ms - _PG_EPOCH_MS) * 1000, self._tail, 8, offset)
        )

    def _rest_of(self, kind: type) -> tuple[Any, bytes]:
        name = _text(kind.__name__)
        layout = struct.Struct(f">iq{len(name)}siq{len(self._tail)}siq")
        return layout.pack, name

    def __len__(self) -> int:
        return len(self.rows)

    def take(self) -> bytes:
        """The COPY data of the rows added since the last ``take``; they are forgotten."""
        rows, self.rows = self.rows, []
        return b"".join((_HEADER, *rows, _TRAILER))

    async def copy_into(self, driver: Any, schema: str) -> None:
        """COPY the rows added since the last ``take`` into ``schema.event_index`` through
        an asyncpg connection (in its open transaction)."""
        if self.rows:
            await copy_index(driver, schema, self.take())


async def copy_index(driver: Any, schema: str, data: bytes) -> None:
    """COPY the data of :meth:`IndexCopy.take` into ``schema.event_index`` (asyncpg)."""
    # A memoryview: asyncpg would take bytes for a file name.
    await driver.copy_to_table(
        "event_index", schema_name=schema, columns=COLUMNS, source=memoryview(data),
        format="binary",
    )  # fmt: skip
