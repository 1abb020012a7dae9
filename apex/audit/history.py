"""One run's history, read from the log itself — Kafka, not the read models.

The event index says where each of the run's events is (topic, partition,
offset); :func:`run_history` reads exactly those records, from the first to the
last, decoding only the record batches that hold them
(:func:`apex.audit.offsets.fetch_offsets`), so its cost follows the run's size,
not the log's (DESIGN target: < 100 ms at any log size).
The read models only point; every event shown is decoded from the log's bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from apex import codec
from apex.audit.offsets import fetch_offsets
from apex.chain import chain_of
from apex.config import Settings
from apex.domain.definition_format import definition_to_dict
from apex.domain.definitions import WorkflowDefinition
from apex.domain.events import Event
from apex.kafka.event_log import EventLogReader
from apex.projections.schema import quote_ident

__all__ = [
    "LoggedEvent",
    "RunHistory",
    "RunNotIndexed",
    "event_fields",
    "index_positions",
    "run_history",
    "scan_history",
]


class RunNotIndexed(LookupError):
    """The event index has no row of the run (unknown run, or the projector is behind)."""


class LoggedEvent(NamedTuple):
    """An event with where it is in the log and the bytes it was written as."""

    event: Event
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    """The Kafka record's timestamp (when the orchestrator appended it)."""
    chain: bytes | None
    """The record's ``apex.chain`` header."""
    value: bytes

    @classmethod
    def from_record(cls, record: Any) -> LoggedEvent:
        return cls(
            codec.decode_event(record.value),
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
            chain_of(record.headers),
            bytes(record.value),
        )


@dataclass
class RunHistory:
    run_id: str
    events: list[LoggedEvent]
    records_read: int
    """Records read to reach them: the run's and any read through between close ones."""
    fetches: int

    @property
    def offsets(self) -> list[tuple[int, int]]:
        return [(e.partition, e.offset) for e in self.events]


async def index_positions(
    engine: AsyncEngine, schema: str, run_id: str
) -> list[tuple[int, str, int, int]]:
    """``(seq, topic, partition, offset)`` of each indexed event of the run, by seq."""
    q = quote_ident(schema)
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                f'SELECT seq, topic, partition, "offset" FROM {q}.event_index '
                "WHERE run_id = :run_id ORDER BY seq"
            ),
            {"run_id": run_id},
        )
        return [(row[0], row[1], row[2], row[3]) for row in result]


async def run_history(
    settings: Settings,
    engine: AsyncEngine,
    run_id: str,
    *,
    schema: str | None = None,
    reader: EventLogReader | None = None,
    gap: int | None = None,
) -> RunHistory:
    """The run's events from Kafka, in seq order, located by the event index.

    Pass a started ``reader`` to reuse its connection (a service answering many
    audits); ``gap`` overrides ``APEX_AUDIT_SEEK_GAP``.
    """
    positions = await index_positions(engine, schema or settings.read_model_schema, run_id)
    if not positions:
        raise RunNotIndexed(
            f"run {run_id!r} is not in the event index of schema "
            f"{schema or settings.read_model_schema!r}: unknown run, or the projector has not "
            "reached it yet (see `apex projections status`)"
        )
    places: dict[tuple[str, int], list[int]] = {}
    for _seq, topic, partition, offset in positions:
        places.setdefault((topic, partition), []).append(offset)
    own = reader is None
    log = reader or EventLogReader(settings)
    if own:
        await log.start()
    seek_gap = settings.audit_seek_gap if gap is None else gap
    try:
        # A run lives in one partition as a rule; if not, partitions go at once too.
        reads = await asyncio.gather(
            *(
                fetch_offsets(log, topic, partition, offsets, gap=seek_gap)
                for (topic, partition), offsets in places.items()
            )
        )
    finally:
        if own:
            await log.stop()
    events = sorted(
        (LoggedEvent.from_record(rec) for records, _, _ in reads for rec in records),
        key=lambda e: e.event.seq,
    )
    return RunHistory(
        run_id,
        events,
        sum(read for _, read, _ in reads),
        sum(fetches for _, _, fetches in reads),
    )


async def scan_history(
    settings: Settings, run_ids: Iterable[str] | None, topic: str
) -> dict[str, list[LoggedEvent]]:
    """Runs' events found by reading a whole topic (no index): slow, for copies and checks.

    ``run_ids=None`` keeps every run. Records are matched on their key (the
    run id), then decoded; seq-0 refusals are kept too.
    """
    wanted = None if run_ids is None else {r.encode() for r in run_ids}
    found: dict[str, list[LoggedEvent]] = {}
    async with EventLogReader(settings, max_partition_fetch_bytes=4 * 1024 * 1024) as log:
        ends = await log.end_offsets(topic)
        for partition in sorted(ends):
            async for records in log.scan(topic, partition, None, ends[partition]):
                for rec in records:
                    if wanted is not None and rec.key not in wanted:
                        continue
                    logged = LoggedEvent.from_record(rec)
                    found.setdefault(logged.event.run_id, []).append(logged)
    return found


def event_fields(event: Event) -> dict[str, Any]:
    """An event's own fields (without run id, seq and time) as JSON-ready values."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(event):
        if f.name in ("run_id", "seq", "occurred_at_ms"):
            continue
        value = getattr(event, f.name)
        if isinstance(value, WorkflowDefinition):
            value = definition_to_dict(value)
        elif isinstance(value, Enum):
            value = value.value
        fields[f.name] = value
    return fields
