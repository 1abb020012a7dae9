"""Events of a time range to an Avro Object Container File, for archives.

The file embeds its writer schema (:func:`archive_schema`), so any Avro tool
reads it without Apex: ``apex.audit.ArchivedEvent`` records holding where the
event was in the log (topic, partition, offset, record timestamp), its
``apex.chain`` hash, the exact bytes it was written as (so the chain can be
checked from the archive alone), and the event itself as a union of every
event record schema of ``schemas/avro/``.

The archive schema is assembled here from those schemas rather than kept as a
file of its own: it is the one schema that refers to the others, and each file
in ``schemas/avro/`` is a message type that stands alone (the codec and the
compatibility test rely on that).

Which records to read comes from the event index (per partition, the offsets
of the events that occurred in the range); each is then decoded from the log
and kept if it occurred in ``[start, end)``. Records are written partition by
partition in log order. Like the index, the archive holds the events of runs'
histories (``seq >= 1``): a ``CommandRejected`` with ``seq`` 0 belongs to no run
and stays in the log only.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import fastavro
from fastavro.write import Writer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from apex import codec
from apex.chain import chain_of
from apex.config import Settings
from apex.domain.events import EVENT_TYPES, Event
from apex.kafka.event_log import EventLogReader
from apex.projections.rows import from_ms
from apex.projections.schema import quote_ident

__all__ = [
    "ARCHIVE_SCHEMA_NAME",
    "ExportReport",
    "archive_record",
    "archive_schema",
    "export_events",
]

ARCHIVE_SCHEMA_NAME = "apex.audit.ArchivedEvent"


@dataclass
class ExportReport:
    path: Path
    events: int
    records_read: int


def archive_schema() -> dict[str, Any]:
    """The OCF writer schema (plain JSON): an envelope around a union of every event type."""
    seen: set[str] = set()
    branches = [_standalone(codec.schema_of(t), seen) for t in EVENT_TYPES]
    return {
        "type": "record",
        "name": "ArchivedEvent",
        "namespace": "apex.audit",
        "doc": "An event of apex.events as archived by `apex audit export`: where it was in the "
        "log, its hash chain, the bytes it was written as, and the event decoded.",
        "fields": [
            {"name": "topic", "type": "string"},
            {"name": "partition", "type": "int"},
            {"name": "offset", "type": "long"},
            {
                "name": "timestamp_ms",
                "type": "long",
                "doc": "Kafka record timestamp: when the orchestrator appended the event.",
            },
            {"name": "run_id", "type": "string"},
            {"name": "seq", "type": "long"},
            {"name": "type", "type": "string", "doc": "The event's schema full name."},
            {
                "name": "occurred_at_ms",
                "type": "long",
                "doc": "When the event occurred, Unix epoch milliseconds.",
            },
            {
                "name": "chain",
                "type": ["null", "bytes"],
                "doc": "The apex.chain header: sha256(previous chain of the run || value).",
            },
            {
                "name": "value",
                "type": "bytes",
                "doc": "The record value as written: Avro single-object encoding "
                "(C3 01, CRC-64-AVRO fingerprint, body).",
            },
            {"name": "event", "type": branches, "doc": "The event, decoded."},
        ],
    }


_PARSED: dict[str, Any] = {}


def _parsed_schema() -> Any:
    if "schema" not in _PARSED:
        _PARSED["schema"] = fastavro.parse_schema(archive_schema())
    return _PARSED["schema"]


def archive_record(
    event: Event,
    value: bytes,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    chain: bytes | None,
) -> dict[str, Any]:
    """One ``ArchivedEvent`` record (the event branch named explicitly, as fastavro wants)."""
    name = f"apex.{type(event).__name__}"
    body = codec.encode_event(event)[codec.HEADER_SIZE :]
    decoded = fastavro.schemaless_reader(BytesIO(body), codec.schema_of(type(event)), None)
    return {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp_ms": timestamp_ms,
        "run_id": event.run_id,
        "seq": event.seq,
        "type": name,
        "occurred_at_ms": event.occurred_at_ms,
        "chain": chain,
        "value": value,
        "event": (name, decoded),
    }


async def export_events(
    settings: Settings,
    engine: AsyncEngine,
    start: datetime,
    end: datetime,
    path: Path,
    *,
    schema: str | None = None,
    codec_name: str = "deflate",
) -> ExportReport:
    """Write every event that occurred in ``[start, end)`` to ``path`` (an Avro OCF)."""
    q = quote_ident(schema or settings.read_model_schema)
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                f'SELECT topic, partition, min("offset"), max("offset") FROM {q}.event_index '
                "WHERE occurred_at >= :start AND occurred_at < :end "
                "GROUP BY topic, partition ORDER BY topic, partition"
            ),
            {"start": start, "end": end},
        )
        ranges = [tuple(row) for row in result]
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with path.open("wb") as out:
        writer = Writer(
            out,
            _parsed_schema(),
            codec=codec_name,
            metadata={"apex.export.from": start.isoformat(), "apex.export.to": end.isoformat()},
        )
        async with EventLogReader(settings, max_partition_fetch_bytes=4 * 1024 * 1024) as log:
            for topic, partition, first, last in ranges:
                async for batch in log.scan(topic, partition, first, last + 1):
                    for rec in batch:
                        event = codec.decode_event(rec.value)
                        moment = from_ms(event.occurred_at_ms)
                        assert moment is not None
                        if event.seq > 0 and start <= moment < end:
                            writer.write(
                                archive_record(
                                    event,
                                    bytes(rec.value),
                                    rec.topic,
                                    rec.partition,
                                    rec.offset,
                                    rec.timestamp,
                                    chain_of(rec.headers),
                                )
                            )
                            written += 1
            read = log.stats.records
        writer.flush()
    return ExportReport(path, written, read)


def _standalone(schema: dict[str, Any], seen: set[str]) -> dict[str, Any]:
    """A deep copy without fastavro's private keys, each named type defined once in the file."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            name = node.get("name")
            if node.get("type") in ("record", "enum", "fixed") and isinstance(name, str):
                if name in seen:
                    return name  # defined earlier in the union: refer to it by name
                seen.add(name)
            return {k: walk(v) for k, v in node.items() if not k.startswith("__")}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(copy.deepcopy(schema))
    json.dumps(result)  # plain JSON, or fail here rather than in the writer
    return result
