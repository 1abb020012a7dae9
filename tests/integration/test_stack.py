"""The local stack is real: Kafka 4 with transactions, PostgreSQL through SQLAlchemy async."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid

import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import Column, Integer, MetaData, String, Table, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from apex.config import Settings
from apex.devstack import services
from apex.devstack.process import listeners_of
from apex.devstack.topics import topic_configs


async def test_topic_is_created_with_its_configs(
    topic_factory, kafka_admin: AIOKafkaAdminClient
) -> None:
    topic = await topic_factory(
        "events",
        partitions=3,
        configs={"retention.ms": "-1", "cleanup.policy": "compact", "min.insync.replicas": "1"},
    )

    configs = await topic_configs(kafka_admin, topic)
    assert configs["retention.ms"] == "-1"
    assert configs["cleanup.policy"] == "compact"
    assert configs["min.insync.replicas"] == "1"
    [described] = await kafka_admin.describe_topics([topic])
    assert len(described["partitions"]) == 3


async def test_aborted_transaction_is_invisible_to_read_committed(
    topic_factory, kafka_bootstrap: str
) -> None:
    topic = await topic_factory("log")
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        transactional_id=f"test-{uuid.uuid4().hex}",
        enable_idempotence=True,
        acks="all",
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"first", key=b"run-1")
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted", key=b"run-1")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(topic, b"second", key=b"run-1")
            await producer.send_and_wait(topic, b"third", key=b"run-1")
    finally:
        await producer.stop()

    committed = await _read_all(kafka_bootstrap, topic, "read_committed")
    uncommitted = await _read_all(kafka_bootstrap, topic, "read_uncommitted")

    assert committed == [b"first", b"second", b"third"]
    # The aborted record really is in the log; only read_committed hides it.
    assert uncommitted == [b"first", b"aborted", b"second", b"third"]


async def _read_all(bootstrap: str, topic: str, isolation_level: str) -> list[bytes]:
    """Every record value of partition 0 up to its end (the LSO for read_committed)."""
    partition = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level=isolation_level,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign([partition])
        end = (await consumer.end_offsets([partition]))[partition]
        values: list[bytes] = []
        async with asyncio.timeout(20):
            while await consumer.position(partition) < end:
                batch = await consumer.getmany(partition, timeout_ms=500)
                values += [record.value for record in batch.get(partition, [])]
        return values
    finally:
        await consumer.stop()


async def test_sqlalchemy_async_round_trip_in_the_test_schema(
    async_engine: AsyncEngine, pg_schema: str
) -> None:
    metadata = MetaData()
    steps = Table(
        "steps",
        metadata,
        Column("seq", Integer, primary_key=True),
        Column("name", String, nullable=False),
    )

    async with async_engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(steps.insert(), [{"seq": 1, "name": "fetch"}, {"seq": 2, "name": "sum"}])
    async with async_engine.connect() as conn:
        rows = (await conn.execute(select(steps.c.seq, steps.c.name).order_by(steps.c.seq))).all()
        schema = await conn.scalar(text("select current_schema()"))
        # The schema of the table that the unqualified name resolves to.
        table_schema = await conn.scalar(
            text(
                "select relnamespace::regnamespace::text from pg_class"
                " where oid = 'steps'::regclass"
            )
        )

    assert [tuple(row) for row in rows] == [(1, "fetch"), (2, "sum")]
    assert schema == pg_schema
    assert table_schema == pg_schema


def test_services_listen_on_loopback_only(settings: Settings) -> None:
    expected_ports = {
        "kafka": {settings.kafka_port, settings.kafka_controller_port},
        "postgres": {settings.pg_port},
    }
    for svc in services(settings):
        pid = svc.running_pid()
        if pid is None:
            pytest.skip(
                f"{svc.name} answers but was not started by `apex dev up` (no live pid file "
                f"in {svc.pid_file}): its sockets are not ours to inspect"
            )
        process = psutil.Process(pid)
        listeners = [
            addr
            for p in [process, *process.children(recursive=True)]
            for addr in listeners_of(p.pid)
        ]

        assert {port for _, port in listeners} >= expected_ports[svc.name], listeners
        not_loopback = [(ip, port) for ip, port in listeners if not _is_loopback(ip)]
        assert not not_loopback, f"{svc.name} (pid {pid}) listens beyond loopback: {not_loopback}"


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
