"""Reading ``apex.events`` outside a consumer group: ranges, and exact offsets.

:class:`EventLogReader` is a committed-only (``read_committed``) consumer with
no group, for tools that decide where to read: the rebuild (each partition
from its start to the end offsets taken when it began), the audit (the
offsets the event index names for one run) and the projector (the history of
a run it has not folded yet).

Reading exact offsets (:meth:`EventLogReader.read_offsets`) seeks to the first
offset and stops after the last; between two wanted offsets it reads through
up to ``gap`` other records rather than seek (one fetch round trip costs about
as much as parsing a few hundred records) and seeks over larger gaps. It never
reads a record before the first wanted offset or after the last, and counts
what it read (:class:`ReadStats`) so a test can hold it to that.

Offsets between two records may be missing: a transactional producer's commit
markers and aborted records take offsets that a committed reader never sees.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from apex.config import Settings
from apex.kafka.clients import make_consumer, topic_partitions

__all__ = ["EventLogReader", "MissingOffsets", "ReadStats"]


class MissingOffsets(LookupError):
    """Offsets an index names hold no committed record of the topic."""


@dataclass
class ReadStats:
    records: int = 0
    """Records the consumer handed over (wanted or read through)."""
    fetches: int = 0
    """``getmany`` calls: round trips, at most."""
    seeks: int = 0


class EventLogReader:
    """``async with EventLogReader(settings) as log:`` — a group-less committed reader."""

    def __init__(self, settings: Settings, **consumer_options: Any) -> None:
        self.settings = settings
        self.stats = ReadStats()
        # Small fetches by default: reading exact offsets wants one record batch
        # near each, not a megabyte after it (measured: p50 47 -> 29 ms for one
        # run's history in a 1M-event log). Scans ask for big fetches.
        options = {
            "fetch_max_wait_ms": 100,
            "max_partition_fetch_bytes": 256 * 1024,
            **consumer_options,
        }
        self._consumer: AIOKafkaConsumer = make_consumer(settings, **options)
        self._started = False
        self._lock = asyncio.Lock()
        """One consumer, one position per partition: concurrent reads take turns."""

    async def __aenter__(self) -> EventLogReader:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if not self._started:
            try:
                await self._consumer.start()
            except BaseException:
                await self._consumer.stop()  # close what a failed bootstrap opened
                raise
            self._started = True

    async def stop(self) -> None:
        if self._started:
            await self._consumer.stop()
            self._started = False

    # -- metadata --------------------------------------------------------------------

    async def partitions(self, topic: str) -> list[int]:
        """The topic's partitions; ``[]`` when it does not exist."""
        return [tp.partition for tp in await topic_partitions(self._consumer, topic)]

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset after the last committed record (the LSO)."""
        tps = [TopicPartition(topic, p) for p in await self.partitions(topic)]
        if not tps:
            return {}
        ends = await self._consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}

    async def beginning_offsets(self, topic: str) -> dict[int, int]:
        tps = [TopicPartition(topic, p) for p in await self.partitions(topic)]
        if not tps:
            return {}
        starts = await self._consumer.beginning_offsets(tps)
        return {tp.partition: offset for tp, offset in starts.items()}

    # -- ranges ------------------------------------------------------------------------

    async def scan(
        self,
        topic: str,
        partition: int,
        start: int | None = None,
        end: int | None = None,
        *,
        max_records: int = 10_000,
    ) -> AsyncIterator[list[Any]]:
        """Batches of the records with ``start <= offset < end`` (default: the whole partition).

        A scan has the reader to itself: do not interleave it with other reads.
        """
        tp = TopicPartition(topic, partition)
        if end is None:
            end = (await self._consumer.end_offsets([tp]))[tp]
        self._assign(tp)
        if start is None:
            await self._consumer.seek_to_beginning(tp)
        else:
            self._consumer.seek(tp, start)
        self.stats.seeks += 1
        while await self._consumer.position(tp) < end:
            batch = await self._consumer.getmany(tp, timeout_ms=1000, max_records=max_records)
            self.stats.fetches += 1
            records = batch.get(tp, [])
            if records and records[-1].offset >= end:
                records = [rec for rec in records if rec.offset < end]
            self.stats.records += len(records)
            if records:
                yield records

    # -- exact offsets -------------------------------------------------------------------

    async def read_offsets(
        self,
        topic: str,
        partition: int,
        offsets: Iterable[int],
        *,
        gap: int | None = None,
        timeout_s: float = 30.0,
    ) -> list[Any]:
        """The records at exactly ``offsets``, in offset order.

        Raises :class:`MissingOffsets` when an offset holds no committed record.
        """
        wanted = sorted(set(offsets))
        if not wanted:
            return []
        gap = self.settings.audit_seek_gap if gap is None else gap
        tp = TopicPartition(topic, partition)
        found: list[Any] = []
        missing: list[int] = []
        deadline = time.monotonic() + timeout_s
        async with self._lock:
            self._assign(tp)
            for segment in _segments(wanted, gap):
                got = await self._read_segment(tp, segment, deadline)
                found.extend(got)
                if len(got) != len(segment):
                    have = {rec.offset for rec in got}
                    missing.extend(o for o in segment if o not in have)
        if missing:
            raise MissingOffsets(
                f"{topic}[{partition}] has no committed record at offsets {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}: the index does not match this topic"
            )
        return found

    async def _read_segment(
        self, tp: TopicPartition, segment: Sequence[int], deadline: float
    ) -> list[Any]:
        first, last = segment[0], segment[-1]
        want = set(segment)
        self._consumer.seek(tp, first)
        self.stats.seeks += 1
        got: list[Any] = []
        next_offset = first
        while next_offset <= last:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {tp.topic}[{tp.partition}] {first}..{last} timed out")
            batch = await self._consumer.getmany(
                tp, timeout_ms=500, max_records=last - next_offset + 1
            )
            self.stats.fetches += 1
            records = batch.get(tp, [])
            if not records:
                if await self._consumer.position(tp) > last:
                    break  # only markers (or nothing) were left: a wanted offset is not a record
                continue
            for rec in records:
                if rec.offset > last:
                    break
                self.stats.records += 1
                if rec.offset in want:
                    got.append(rec)
            next_offset = records[-1].offset + 1
        return got

    def _assign(self, tp: TopicPartition) -> None:
        if self._consumer.assignment() != {tp}:
            self._consumer.assign([tp])


def _segments(offsets: Sequence[int], gap: int) -> list[list[int]]:
    """Sorted offsets cut where more than ``gap`` other records lie between two."""
    segments: list[list[int]] = [[offsets[0]]]
    for offset in offsets[1:]:
        if offset - segments[-1][-1] - 1 > gap:
            segments.append([offset])
        else:
            segments[-1].append(offset)
    return segments
