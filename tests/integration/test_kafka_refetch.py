"""A consumer on the hop's path (``refetch_later``) asks for more records after the
caller's sends, and still receives every record, in order, one at a time."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from apex.config import Settings
from apex.kafka.clients import make_consumer, make_producer
from apex.kafka.topology import ensure_topics


async def test_records_taken_one_at_a_time_all_arrive_and_the_fetcher_wakes_later(
    apex_settings: Settings,
) -> None:
    await ensure_topics(apex_settings)
    tp = TopicPartition(apex_settings.topic("events"), 0)
    producer = make_producer(apex_settings)
    deferred = make_consumer(apex_settings, refetch_later=True)
    plain = make_consumer(apex_settings)
    await producer.start()
    await deferred.start()
    await plain.start()
    try:
        for consumer in (deferred, plain):
            consumer.assign([tp])
            await consumer.seek_to_end(tp)
            await consumer.position(tp)
        received: dict[str, list[bytes]] = {"deferred": [], "plain": []}
        woken: dict[str, list[bool]] = {"deferred": [], "plain": []}
        # The orchestrator's case at one run in flight: the next record is produced
        # only after the last one was taken, so every record needs the wake-up.
        for n in range(20):
            await producer.send_and_wait(tp.topic, b"%02d" % n, partition=tp.partition)
            for name, consumer in (("deferred", deferred), ("plain", plain)):
                for _ in range(100):  # bounded: never hangs
                    batch = await consumer.getmany(tp, timeout_ms=100)
                    if batch:
                        break
                # The fetcher's wake-up for what was just taken, as getmany returns.
                wake_up = consumer._fetcher._wait_consume_future
                woken[name].append(wake_up.done())
                received[name] += [r.value for r in batch.get(tp, ())]
                if name == "deferred":
                    # ... and that it comes: the fetcher's own timeout would hide a
                    # lost one (records still arrive), not set this future.
                    await asyncio.sleep(0.005)
                    assert wake_up.done(), f"record {n}: the deferred wake-up never came"
        expected = [b"%02d" % n for n in range(20)]
        assert received == {"deferred": expected, "plain": expected}
        assert woken["plain"] == [True] * 20  # aiokafka wakes its fetcher at once
        assert woken["deferred"] == [False] * 20  # ours later, after the caller's sends
    finally:
        await plain.stop()
        await deferred.stop()
        await producer.stop()
