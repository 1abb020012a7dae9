"""The producers' partitioner (Kafka's default placement, the hash remembered); record sizes."""

from __future__ import annotations

import uuid
from dataclasses import replace
from types import SimpleNamespace

import aiokafka.producer.sender as sender
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from apex.config import Settings
from apex.kafka.clients import RecordTooLarge, _partitioner, make_producer, oversize, partition_for
from apex.kafka.dlq import SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC, VALUE_OMITTED, dead_letter


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


def test_oversize_counts_the_record_as_kafka_does_and_only_when_it_can_matter() -> None:
    headers = [("traceparent", b"00-" + b"a" * 50), ("apex.chain", bytes(32))]
    value = b"v" * 100_000
    exact = DefaultRecordBatchBuilder.estimate_size_in_bytes(b"run-1", value, headers)
    assert oversize(b"run-1", value, headers, exact) is None
    assert oversize(b"run-1", value, headers, exact - 1) == exact
    assert oversize(b"run-1", b"small", headers, 1_000_000) is None
    assert oversize(None, None, None, 1_000_000) is None


def test_a_dead_letter_over_the_limit_keeps_its_headers_and_says_why_it_has_no_value() -> None:
    settings = replace(Settings.from_env({}), max_record_bytes=50_000)
    record = SimpleNamespace(
        topic="apex.commands", partition=2, offset=41, key=b"run-1", value=b"x" * 60_000, headers=[]
    )
    letter = dead_letter(settings, record, "orchestrator", RecordTooLarge("too large"))
    headers = dict(letter.headers)
    assert letter.value is None and letter.key == b"run-1"
    assert headers[VALUE_OMITTED] == b"60000"
    assert (headers[SOURCE_TOPIC], headers[SOURCE_PARTITION], headers[SOURCE_OFFSET]) == (
        b"apex.commands",
        b"2",
        b"41",
    )
    fits = dead_letter(settings, replace_value(record, b"x" * 100), "orchestrator", "invalid")
    assert fits.value == b"x" * 100 and VALUE_OMITTED not in dict(fits.headers)


def replace_value(record: SimpleNamespace, value: bytes) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(record), "value": value})
