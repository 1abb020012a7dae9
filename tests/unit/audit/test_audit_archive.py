"""The archive schema any Avro tool reads, and the state at a point in time."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import timedelta

import avro.schema
import fastavro
from avro.datafile import DataFileReader
from avro.io import DatumReader

from apex import codec
from apex.audit.export import archive_record, archive_schema
from apex.audit.state import prefix, state_at, state_to_dict
from apex.domain.events import EVENT_TYPES
from apex.domain.state import fold
from apex.projections.rows import from_ms
from benchmarks.synthetic_log import SCENARIOS, play


def test_the_archive_schema_is_plain_avro_with_every_event_type_once() -> None:
    schema = archive_schema()
    text = json.dumps(schema)
    avro.schema.parse(text)  # the Apache implementation accepts it
    branches = next(f["type"] for f in schema["fields"] if f["name"] == "event")
    assert [b["name"] for b in branches] == [f"apex.{t.__name__}" for t in EVENT_TYPES]
    assert text.count('"name": "apex.GateWhen"') == 1, "a named type is defined once"
    assert "__fastavro" not in text


def test_archived_events_round_trip_through_fastavro_and_avro() -> None:
    events = [e for s in sorted(set(SCENARIOS)) for e in play(s, f"run-{s}")]
    records = [
        archive_record(e, codec.encode_event(e), "apex.events", 0, i, 1, b"\x00" * 32)
        for i, e in enumerate(events)
    ]
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(archive_schema()), records)

    buffer.seek(0)
    back = list(fastavro.reader(buffer))
    buffer.seek(0)
    by_avro = list(DataFileReader(buffer, DatumReader()))
    assert [codec.decode_event(r["value"]) for r in back] == events
    assert [r["event"] for r in by_avro] == [r["event"] for r in back]
    assert {r["type"] for r in back} >= {"apex.RunStarted", "apex.ApprovalGranted"}


def test_state_at_a_time_is_the_longest_prefix_that_occurred_by_then() -> None:
    events = play("retry", "run-1")
    # A reporter with a fast clock: the fourth event claims a time after the fifth.
    skewed = [
        *events[:3],
        replace(events[3], occurred_at_ms=events[4].occurred_at_ms + 60_000),
        *events[4:],
    ]
    moment = from_ms(events[4].occurred_at_ms)
    assert moment is not None

    assert prefix(skewed, at_time=moment) == skewed[:3]
    assert state_at(skewed, at_time=moment) == fold(skewed[:3])
    assert state_at(events, at_seq=3) == fold(events[:3])
    first = from_ms(events[0].occurred_at_ms)
    assert first is not None
    assert state_at(events, at_time=first - timedelta(milliseconds=1)) is None


def test_state_to_dict_is_json() -> None:
    state = fold(play("approved", "run-1"))
    assert state is not None
    data = json.loads(json.dumps(state_to_dict(state)))
    assert data["status"] == "completed" and data["steps"]["act"]["approval_granted"] is True
    assert data["started_at"].endswith("Z")
