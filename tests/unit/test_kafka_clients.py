"""The producers' partitioner: Kafka's default placement, with the hash remembered."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import aiokafka.producer.sender as sender
from aiokafka.partitioner import DefaultPartitioner

from apex.config import Settings
from apex.kafka.clients import _partitioner, make_producer, partition_for


def test_keys_land_where_kafkas_default_partitioner_puts_them() -> None:
    keys = [f"acme:{uuid.uuid4()}".encode() for _ in range(500)] + [b"", b"r1", "é".encode()]
    for count in (1, 3, 6, 7):
        partitions = list(range(count))
        for key in keys:
            expected = DefaultPartitioner()(key, partitions, partitions)
            assert _partitioner(key, partitions, partitions) == expected
            assert _partitioner(key, partitions, partitions) == expected  # from memory


async def test_the_producer_places_keyed_records_as_kafkas_default_partitioner() -> None:
    producer = make_producer(Settings.from_env({}))
    keys = [f"run-{n}".encode() for n in range(300)]
    for count in (1, 6, 7):
        producer._metadata._partitions["t"] = {p: SimpleNamespace(leader=1) for p in range(count)}
        assert producer._metadata.partitions_for_topic("t") == set(range(count))
        partitions = list(range(count))
        for key in keys:
            placed = producer._partition("t", None, key, b"v", key, b"v")
            assert placed == DefaultPartitioner()(key, partitions, partitions)
            assert placed == partition_for(key, count)
    assert producer._partition("t", 3, b"k", b"v", b"k", b"v") == 3  # an explicit partition
    assert producer._partition("t", None, None, b"v", None, b"v") in range(7)  # keyless
    await producer.stop()


async def test_the_producer_asks_for_a_known_topics_partitions_without_a_round_trip() -> None:
    producer = make_producer(Settings.from_env({}))
    producer._metadata._partitions["t"] = {p: SimpleNamespace(leader=1) for p in range(3)}
    assert set(await producer.client._wait_on_metadata("t")) == {0, 1, 2}
    assert await producer.partitions_for("t") == producer._metadata.partitions_for_topic("t")
    producer._metadata._partitions["t"] = {p: SimpleNamespace(leader=1) for p in range(5)}
    assert set(await producer.partitions_for("t")) == {0, 1, 2, 3, 4}  # follows metadata updates
    await producer.stop()


def test_a_keyless_record_goes_to_an_available_partition() -> None:
    assert {_partitioner(None, [0, 1, 2], [2]) for _ in range(20)} == {2}
    assert _partitioner(None, [0, 1, 2], []) in {0, 1, 2}


async def test_a_transactional_producer_retries_concurrent_transactions_at_the_setting() -> None:
    before = sender.BACKOFF_OVERRIDE
    try:
        make_producer(Settings.from_env({"APEX_KAFKA_TXN_RETRY_MS": "3"}), transactional_id="t")
        assert sender.BACKOFF_OVERRIDE == 0.003
    finally:
        sender.BACKOFF_OVERRIDE = before
