"""``send_batched``: records as one batch per partition, nothing lost or reordered."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from apex.config import Settings
from apex.kafka.clients import make_consumer, make_producer, partition_for, send_batched
from apex.kafka.topology import ensure_topics


async def _read(settings: Settings, topic: str, partitions: int) -> dict[int, list[bytes]]:
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, records in (await consumer.getmany(*tps, timeout_ms=500)).items():
                found[tp.partition] += [r.value for r in records]
        return found
    finally:
        await consumer.stop()


async def test_full_batches_go_first_and_every_record_arrives_in_order(
    apex_settings: Settings,
) -> None:
    await ensure_topics(apex_settings)
    topic = apex_settings.topic("events")
    producer = make_producer(
        apex_settings,
        transactional_id=f"{apex_settings.topic_prefix}batches",
        max_batch_size=1024,  # ~9 records of 100 bytes: batches fill up and follow one another
    )
    await producer.start()
    keys = [f"run-{n}".encode() for n in range(4)]
    records = [
        (topic, keys[n % 4], b"%03d" % n + b"x" * 97, [("n", b"%d" % n)]) for n in range(120)
    ]
    try:
        await producer.begin_transaction()
        futures = await send_batched(producer, records)
        assert len(futures) > apex_settings.partitions, "no batch filled up"
        await asyncio.gather(*futures)
        await producer.commit_transaction()
    finally:
        await producer.stop()
    expected: dict[int, list[bytes]] = {p: [] for p in range(apex_settings.partitions)}
    for _, key, value, _ in records:
        assert key is not None and value is not None
        expected[partition_for(key, apex_settings.partitions)].append(value)
    assert await _read(apex_settings, topic, apex_settings.partitions) == expected
