"""A partition that holds committed, aborted and plain records, as readers meet them.

``apex.kafka.fetch`` filters aborted transactions itself (its readers send plain
Fetch requests): the audit's exact offsets and the rebuild's scan are compared
with what aiokafka's committed consumer reads of this log.
"""

from __future__ import annotations

from aiokafka import TopicPartition

from apex.config import Settings
from apex.kafka.clients import make_consumer, make_producer
from apex.kafka.topology import ensure_topics


async def write_mixed_log(settings: Settings) -> tuple[str, list[tuple[int, bytes]]]:
    """Partition 0 of the events topic: a committed transaction, an aborted one, a
    plain record, a committed one; the topic and its committed ``(offset, value)``s."""
    await ensure_topics(settings)
    topic = settings.topic("events")
    await _transaction(settings, topic, [b"c1", b"c2", b"c3"], commit=True)
    await _transaction(settings, topic, [b"a1", b"a2"], commit=False)
    plain = make_producer(settings)
    await plain.start()
    try:
        await plain.send_and_wait(topic, b"p1", key=b"run", partition=0)
    finally:
        await plain.stop()
    await _transaction(settings, topic, [b"c4", b"c5"], commit=True)
    everything = await _committed(settings, topic)
    assert [value for _, value in everything] == [b"c1", b"c2", b"c3", b"p1", b"c4", b"c5"]
    return topic, everything


async def _transaction(
    settings: Settings, topic: str, values: list[bytes], *, commit: bool
) -> None:
    producer = make_producer(settings, transactional_id=f"{settings.topic_prefix}audit-offsets")
    await producer.start()
    try:
        await producer.begin_transaction()
        for value in values:
            await producer.send_and_wait(topic, value, key=b"run", partition=0)
        if commit:
            await producer.commit_transaction()
        else:
            await producer.abort_transaction()
    finally:
        await producer.stop()


async def _committed(settings: Settings, topic: str) -> list[tuple[int, bytes]]:
    """Every committed record of partition 0, as aiokafka's committed consumer reads them."""
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        found: list[tuple[int, bytes]] = []
        while await consumer.position(tp) < end:
            for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, ()):
                found.append((record.offset, record.value))
        return found
    finally:
        await consumer.stop()
