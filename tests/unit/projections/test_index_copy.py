"""``IndexCopy``: the rebuild's binary COPY rows say what ``rows.event_index_row`` says.

The bytes are read back with PostgreSQL's binary COPY layout (signature, flags,
extension, then per row a field count and length-prefixed fields, then -1), so
a row with a field out of place, a wrong length or a time off by the epoch
fails here; ``tests/integration/test_rebuild_bulk.py`` loads them into
PostgreSQL itself.
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apex.domain import events as ev
from apex.domain.definitions import GateWhen, StepDefinition, WorkflowDefinition
from apex.projections import rows as r
from apex.projections.index_copy import COLUMNS, IndexCopy

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_DEFINITION = WorkflowDefinition(
    name="wf", version=1, steps=(StepDefinition(id="a", capability="c"),)
)


def read_copy(data: bytes) -> list[tuple[Any, ...]]:
    """The ``event_index`` rows of binary COPY data, typed as the row tuples are."""
    assert data[:11] == _SIGNATURE
    flags, extension = struct.unpack_from(">ii", data, 11)
    assert (flags, extension) == (0, 0)
    pos, rows = 19, []
    while True:
        (count,) = struct.unpack_from(">h", data, pos)
        pos += 2
        if count == -1:
            assert pos == len(data), "bytes after the trailer"
            return rows
        assert count == len(COLUMNS)
        fields = []
        for _ in range(count):
            (size,) = struct.unpack_from(">i", data, pos)
            pos += 4
            fields.append(data[pos : pos + size])
            pos += size
        run_id, seq, kind, at, topic, partition, offset = fields
        assert len(seq) == len(at) == len(offset) == 8 and len(partition) == 4
        rows.append(
            (
                run_id.decode(),
                int.from_bytes(seq, "big", signed=True),
                kind.decode(),
                _PG_EPOCH + timedelta(microseconds=int.from_bytes(at, "big", signed=True)),
                topic.decode(),
                int.from_bytes(partition, "big", signed=True),
                int.from_bytes(offset, "big", signed=True),
            )
        )


def sample(event_type: type[ev.Event], run_id: str, seq: int, at_ms: int) -> ev.Event:
    """An event of ``event_type`` with this envelope; its other fields are placeholders."""
    hints = typing.get_type_hints(event_type)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(event_type):
        hint = hints[field.name]
        if field.name in ("run_id", "correlation_id", "causation_id"):
            values[field.name] = run_id
        elif hint is WorkflowDefinition:
            values[field.name] = _DEFINITION
        elif hint is GateWhen:
            values[field.name] = GateWhen.BEFORE
        elif hint in (str, str | None):
            values[field.name] = "x"
        elif hint is bool:
            values[field.name] = False
        elif hint in (int, int | None):
            values[field.name] = 1
        else:  # JSON
            values[field.name] = None
    values["seq"], values["occurred_at_ms"] = seq, at_ms
    event: ev.Event = event_type(**values)
    return event


_MIN_MS, _MAX_MS = -62_135_596_800_000, 253_402_300_799_999
"""The times a datetime holds (years 1 to 9999)."""


@pytest.mark.parametrize("event_type", ev.EVENT_TYPES, ids=lambda t: t.__name__)
@given(
    run_id=st.text(min_size=1, max_size=40),
    seq=st.integers(1, 2**63 - 1),
    at_ms=st.integers(_MIN_MS, _MAX_MS),
    offset=st.integers(0, 2**63 - 1),
    topic=st.text(min_size=1, max_size=30),
    partition=st.integers(0, 2**31 - 1),
)
def test_a_row_reads_back_as_event_index_row_gives_it(
    event_type: type[ev.Event],
    run_id: str,
    seq: int,
    at_ms: int,
    offset: int,
    topic: str,
    partition: int,
) -> None:
    event = sample(event_type, run_id, seq, at_ms)
    index = IndexCopy(topic, partition)
    index.add(event, offset)
    position = r.LogPosition(topic, partition, offset)
    assert read_copy(index.take()) == [tuple(r.event_index_row(event, position))]


def test_rows_of_many_runs_and_types_keep_their_order_and_take_starts_over() -> None:
    index = IndexCopy("apex.events", 3)
    events = [
        sample(event_type, f"run-{i % 3}", i + 1, 1_700_000_000_000 + i)
        for i, event_type in enumerate(ev.EVENT_TYPES * 2)
    ]
    for offset, event in enumerate(events):
        index.add(event, offset * 2)
    assert len(index) == len(events)
    expected = [
        tuple(r.event_index_row(e, r.LogPosition("apex.events", 3, o * 2)))
        for o, e in enumerate(events)
    ]
    assert read_copy(index.take()) == expected
    assert len(index) == 0 and read_copy(index.take()) == []


@pytest.mark.parametrize("at_ms", [_MIN_MS - 1, _MAX_MS + 1])
def test_a_time_no_datetime_holds_is_refused_as_from_ms_refuses_it(at_ms: int) -> None:
    event = sample(ev.StepStarted, "run", 1, at_ms)
    with pytest.raises(OverflowError):
        r.from_ms(at_ms)
    with pytest.raises(OverflowError):
        IndexCopy("t", 0).add(event, 0)
