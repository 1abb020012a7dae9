"""``apex.audit.offsets`` on a real broker: committed records only, as the consumer reads them.

The audit's reader filters aborted transactions itself (it sends plain Fetch
requests); here a real aborted transaction sits between committed ones, and
the answer must equal what aiokafka's committed consumer gives.
"""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from apex.audit.offsets import fetch_offsets
from apex.config import Settings
from apex.kafka.clients import make_consumer, make_producer
from apex.kafka.event_log import EventLogReader, MissingOffsets
from apex.kafka.topology import ensure_topics


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


async def test_an_aborted_transaction_is_never_part_of_a_history(apex_settings: Settings) -> None:
    await ensure_topics(apex_settings)
    topic = apex_settings.topic("events")
    await _transaction(apex_settings, topic, [b"c1", b"c2", b"c3"], commit=True)
    await _transaction(apex_settings, topic, [b"a1", b"a2"], commit=False)
    plain = make_producer(apex_settings)
    await plain.start()
    try:
        await plain.send_and_wait(topic, b"p1", key=b"run", partition=0)
    finally:
        await plain.stop()
    await _transaction(apex_settings, topic, [b"c4", b"c5"], commit=True)
    everything = await _committed(apex_settings, topic)
    assert [value for _, value in everything] == [b"c1", b"c2", b"c3", b"p1", b"c4", b"c5"]
    committed = [offset for offset, _ in everything]
    async with EventLogReader(apex_settings) as reader:
        for gap in (0, 1, 100):
            got, _, _ = await fetch_offsets(reader, topic, 0, committed, gap=gap)
            assert [(r.offset, r.value) for r in got] == everything, gap
            got, _, _ = await fetch_offsets(reader, topic, 0, committed[3:], gap=gap)
            assert [(r.offset, r.value) for r in got] == everything[3:], gap
        others = [o for o in range(committed[-1]) if o not in committed]
        assert len(others) == 4  # two aborted records, the two markers before the last commit
        for offset in others:  # hold no committed record: never part of a history
            with pytest.raises(MissingOffsets):
                await fetch_offsets(reader, topic, 0, [offset], gap=0)
