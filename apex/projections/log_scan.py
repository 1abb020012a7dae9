"""A partition of the log read from its start to an end offset with plain Fetch requests.

    async for offsets, values in scan_values(reader, topic, partition, start, end):
        ...  # committed records only, in offset order, start <= offset < end

The rebuild's reader. :meth:`~apex.kafka.event_log.EventLogReader.scan` goes
through aiokafka's consumer, which turns every record into a ``ConsumerRecord``
(a Python dataclass of eleven fields, its headers copied into a tuple) in a
generator: about a sixth of a rebuild's CPU (py-spy), for the two fields a
rebuild reads, the offset and the value. Here the record batches of a Fetch
response are walked as the consumer's fetcher walks them, and each record gives
its offset and value; the next request is in flight while the caller folds the
records of the last (the consumer's prefetch, kept).

Semantics are the committed (``read_committed``) consumer's, as
:mod:`apex.kafka.fetch` gives them (and :mod:`apex.audit.offsets` uses for exact
offsets): batches of aborted transactions and control batches are skipped; CRCs
are checked. The reader's started consumer lends its client; its fetcher is not
used.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaError
from aiokafka.record.memory_records import MemoryRecords

from apex.kafka.event_log import EventLogReader
from apex.kafka.fetch import Aborted, Committed, fetch

__all__ = ["FETCH_BYTES", "scan_values"]

FETCH_BYTES = 4 * 1024 * 1024
"""Bytes asked per Fetch request (the rebuild's ``max_partition_fetch_bytes`` before)."""

_MAX_WAIT_MS = 100
_STALLS = 50
"""Empty answers in a row (each waited up to ``_MAX_WAIT_MS``) before giving up."""


async def scan_values(
    reader: EventLogReader,
    topic: str,
    partition: int,
    start: int,
    end: int,
    *,
    fetch_bytes: int = FETCH_BYTES,
) -> AsyncIterator[tuple[list[int], list[bytes]]]:
    """``(offsets, values)`` of the committed records with ``start <= offset < end``,
    a Fetch response at a time (an empty response is not yielded)."""
    consumer: AIOKafkaConsumer = reader._consumer  # started; only its client is used
    tp = TopicPartition(topic, partition)
    position = start
    if position >= end:
        return

    def request(offset: int) -> asyncio.Future[tuple[bytes, Aborted]]:
        return asyncio.ensure_future(
            fetch(consumer, tp, offset, fetch_bytes, max_wait_ms=_MAX_WAIT_MS)
        )

    pending = request(position)
    try:
        stalled = 0
        while True:
            data, aborted = await pending
            offsets, values, after = _records(tp, data, aborted, position, end)
            if after < end:  # the next request goes out before the caller folds these
                pending = request(after)
            stalled = stalled + 1 if after == position else 0
            if stalled > _STALLS:  # the end offset was the LSO: these offsets exist
                raise KafkaError(f"{topic}[{partition}] gives no record at {position} (end {end})")
            position = after
            if offsets:
                yield offsets, values
            if position >= end:
                return
    finally:
        if not pending.done():
            pending.cancel()


def _records(
    tp: TopicPartition,
    data: bytes,
    aborted: Aborted,
    position: int,
    end: int,
) -> tuple[list[int], list[bytes], int]:
    """The committed records of a Fetch response from ``position``, up to ``end``; and the
    next position (as aiokafka's ``PartitionRecords._unpack_records`` walks them)."""
    offsets: list[int] = []
    values: list[bytes] = []
    committed = Committed(aborted)
    records = MemoryRecords(data)
    while records.has_next() and position < end:
        batch = records.next_batch()
        if batch is None:  # a batch cut short by the request's size: fetched again next
            break
        if batch.next_offset <= position:
            continue
        if not batch.validate_crc():
            raise CorruptRecordException(f"Invalid CRC - {tp}")
        if committed.skips(batch):
            position = batch.next_offset
            continue
        for record in batch:
            offset = record.offset
            if offset < position:
                continue
            if offset >= end:
                break
            offsets.append(offset)
            values.append(record.value)
        position = min(batch.next_offset, end)
    return offsets, values, position
