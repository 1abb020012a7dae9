"""Transaction protocol v2 (KIP-890) on the real broker: the same guarantees as v1, one
round trip fewer — committed records and offsets exactly once, aborted ones never,
a zombie fenced."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, ProducerFenced
from aiokafka.structs import OffsetAndMetadata

from apex.config import Settings
from apex.kafka.clients import make_producer
from apex.kafka.txn_v2 import broker_transaction_version
from tests.integration.runtime import read_all

TopicFactory = Callable[..., Awaitable[str]]


async def _read(settings: Settings, topic: str, isolation: str) -> list[bytes]:
    records = await read_all(settings, topic, isolation_level=isolation)
    return sorted(r.value for r in records if r.value is not None)


def _txn_id() -> str:
    return f"test-v2-{uuid.uuid4().hex}"


def _zombie_and_owner(settings: Settings) -> tuple[AIOKafkaProducer, AIOKafkaProducer]:
    """Two producers of one transactional id: the one that starts first, and its next owner."""
    txn_id = _txn_id()
    return (
        make_producer(settings, transactional_id=txn_id),
        make_producer(settings, transactional_id=txn_id),
    )


async def test_the_local_broker_has_protocol_v2_and_producers_use_it(settings: Settings) -> None:
    producer = make_producer(settings, transactional_id=_txn_id())
    await producer.start()
    try:
        assert await broker_transaction_version(producer) >= 2
        assert producer.txn_protocol == "v2"
    finally:
        await producer.stop()


async def test_v2_commits_exactly_what_was_committed_under_a_new_epoch_each_time(
    settings: Settings, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory("log", partitions=3)
    producer = make_producer(settings, transactional_id=_txn_id())
    await producer.start()
    committed: list[bytes] = []
    aborted: list[bytes] = []
    try:
        first_epoch = producer._txn_manager.producer_epoch
        for n in range(12):
            values = [b"%02d-%d" % (n, i) for i in range(3)]
            await producer.begin_transaction()
            for i, value in enumerate(values):  # keys spread them over the partitions
                await producer.send(topic, value, key=b"run-%d" % (n * 3 + i))
            if n % 4 == 3:
                await producer.abort_transaction()
                aborted += values
            else:
                await producer.commit_transaction()
                committed += values
        # Each transaction's end bumped the epoch; each began its partitions' sequences at 0.
        assert producer._txn_manager.producer_epoch == first_epoch + 12
    finally:
        await producer.stop()

    assert await _read(settings, topic, "read_committed") == sorted(committed)
    assert await _read(settings, topic, "read_uncommitted") == sorted(committed + aborted)


async def test_a_v2_zombie_is_fenced_by_the_next_owner_and_writes_nothing(
    settings: Settings, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory("log")
    zombie, owner = _zombie_and_owner(settings)
    await zombie.start()
    try:
        async with zombie.transaction():
            await zombie.send_and_wait(topic, b"before", key=b"run-1")
        await owner.start()  # InitProducerId: a new epoch fences the first producer
        async with owner.transaction():
            await owner.send_and_wait(topic, b"owner", key=b"run-1")

        await zombie.begin_transaction()
        with pytest.raises(ProducerFenced):
            await zombie.send_and_wait(topic, b"zombie", key=b"run-1")
    finally:
        await owner.stop()
        await zombie.stop()

    assert await _read(settings, topic, "read_uncommitted") == [b"before", b"owner"]
    assert await _read(settings, topic, "read_committed") == [b"before", b"owner"]


async def test_v2_offsets_are_committed_with_the_transaction_and_not_with_an_abort(
    settings: Settings, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory("log")
    out = await topic_factory("out")
    group = f"test-v2-group-{uuid.uuid4().hex}"
    tp = TopicPartition(topic, 0)
    producer = make_producer(settings, transactional_id=_txn_id())
    await producer.start()
    try:
        assert producer.txn_protocol == "v2"
        async with producer.transaction():  # offsets only: TxnOffsetCommit v5 adds them
            await producer.send_offsets_to_transaction({tp: OffsetAndMetadata(7, "")}, group)
        await producer.begin_transaction()
        await producer.send(out, b"aborted", key=b"run-1")
        await producer.send_offsets_to_transaction({tp: OffsetAndMetadata(9, "")}, group)
        await producer.abort_transaction()
        async with producer.transaction():  # records and offsets in one transaction
            await producer.send(out, b"kept", key=b"run-1")
            await producer.send_offsets_to_transaction({tp: OffsetAndMetadata(11, "")}, group)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group)
    await consumer.start()
    try:
        assert await consumer.committed(tp) == 11
    finally:
        await consumer.stop()
    assert await _read(settings, out, "read_committed") == [b"kept"]


async def test_protocol_v1_stays_available_when_asked_for(
    settings: Settings, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory("log")
    producer = make_producer(replace(settings, kafka_txn_protocol="v1"), transactional_id=_txn_id())
    await producer.start()
    try:
        assert producer.txn_protocol == "v1"
        epoch = producer._txn_manager.producer_epoch
        async with producer.transaction():
            await producer.send_and_wait(topic, b"v1", key=b"run-1")
        assert producer._txn_manager.producer_epoch == epoch  # v1 keeps its epoch
    finally:
        await producer.stop()
    assert await _read(settings, topic, "read_committed") == [b"v1"]


def test_an_unknown_protocol_is_refused_by_name(settings: Settings) -> None:
    with pytest.raises(ValueError, match="APEX_KAFKA_TXN_PROTOCOL='v3'"):
        make_producer(replace(settings, kafka_txn_protocol="v3"), transactional_id=_txn_id())


@pytest.mark.slow  # ~33,000 transactions: about three minutes
@pytest.mark.timeout(900)
async def test_v2_goes_on_under_a_new_producer_id_when_the_epochs_run_out(
    settings: Settings, topic_factory: TopicFactory
) -> None:
    """An epoch is a short: after ~32,767 transactions of one id, EndTxn names a new producer
    id (epoch 0), and the transactions after it commit as before (sequences from 0 again)."""
    topic = await topic_factory("log")
    producer = make_producer(settings, transactional_id=_txn_id())
    await producer.start()
    sent = 0
    try:
        first_id = producer._txn_manager.producer_id
        while producer._txn_manager.producer_id == first_id:
            assert sent < 33_000, "the producer id's epochs never ran out"
            async with producer.transaction():
                delivered = await producer.send(topic, b"%d" % sent, key=b"run-1")
            await delivered
            sent += 1
        assert producer._txn_manager.producer_epoch == 0
        for _ in range(3):
            async with producer.transaction():
                delivered = await producer.send(topic, b"%d" % sent, key=b"run-1")
            await delivered
            sent += 1
    finally:
        await producer.stop()

    assert await _read(settings, topic, "read_committed") == sorted(b"%d" % n for n in range(sent))


async def test_a_zombie_committing_after_the_next_owner_started_is_told_it_is_fenced(
    settings: Settings, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory("log")
    zombie, owner = _zombie_and_owner(settings)
    await zombie.start()
    try:
        await zombie.begin_transaction()
        await zombie.send_and_wait(topic, b"zombie", key=b"run-1")
        await owner.start()  # bumps the epoch and aborts the zombie's open transaction
        # EndTxn v5 answers PRODUCER_FENCED (90), which aiokafka alone would call unknown.
        with pytest.raises(ProducerFenced):
            await zombie.commit_transaction()
        async with owner.transaction():
            await owner.send_and_wait(topic, b"owner", key=b"run-1")
    finally:
        await owner.stop()
        await zombie.stop()

    assert await _read(settings, topic, "read_committed") == [b"owner"]


async def test_a_record_the_broker_refuses_fails_its_transaction_and_the_abort_ends_it(
    settings: Settings, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory("log", configs={"max.message.bytes": "2000"})
    producer = make_producer(settings, transactional_id=_txn_id())
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted", key=b"run-1")
        with pytest.raises(MessageSizeTooLargeError):  # the broker's limit, not the client's
            await producer.send_and_wait(topic, b"x" * 5000, key=b"run-1")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(topic, b"kept", key=b"run-1")
    finally:
        await producer.stop()

    assert await _read(settings, topic, "read_committed") == [b"kept"]
    assert b"aborted" in await _read(settings, topic, "read_uncommitted")


async def test_a_failed_question_to_the_broker_leaves_v1_or_a_stopped_producer(
    settings: Settings, topic_factory: TopicFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import apex.kafka.clients as clients

    topic = await topic_factory("log")

    async def unreachable(producer: object) -> bool:
        raise KafkaConnectionError("connection lost")

    monkeypatch.setattr(clients, "use_transaction_v2", unreachable)
    producer = make_producer(settings, transactional_id=_txn_id())
    await producer.start()  # a lost connection costs the round trip v2 saves, nothing else
    try:
        assert producer.txn_protocol == "v1"
        async with producer.transaction():
            await producer.send_and_wait(topic, b"v1", key=b"run-1")
    finally:
        await producer.stop()

    async def broken(producer: object) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(clients, "use_transaction_v2", broken)
    failed = make_producer(settings, transactional_id=_txn_id())
    with pytest.raises(RuntimeError, match="a bug"):
        await failed.start()
    assert failed._closed  # stopped: its sender and connections do not outlive the error
    assert await _read(settings, topic, "read_committed") == [b"v1"]
