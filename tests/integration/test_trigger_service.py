"""Trigger rules on the real broker: business events in, exact commands out.

Each test has its own Apex topic prefix, consumer group and upstream topic; the
service runs in-process and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fastavro import parse_schema, schemaless_writer

from apex import codec
from apex.client import run_id_for
from apex.config import Settings
from apex.devstack.topics import delete_topics
from apex.domain.commands import Command, SendSignal, StartRun
from apex.kafka import dlq
from apex.kafka.clients import make_consumer, make_producer
from apex.triggers import RuleSet, parse_rules
from streams.triggers import RULE_HEADER, SOURCE_HEADER, TriggerService

WAIT_S = 30.0

Record = tuple[bytes | None, bytes | None, dict[str, str]]
"""A record read back: key, value, headers (decoded)."""
Publish = Callable[..., Awaitable[tuple[int, int]]]
"""``await publish(value, key=...)`` -> (partition, offset); JSON unless given bytes."""
Publisher = Callable[[str], Awaitable[Publish]]
MakeTopic = Callable[..., Awaitable[str]]


@pytest.fixture
async def settings_for_test(
    settings: Settings, unique_topic_prefix: str, kafka_admin: AIOKafkaAdminClient
) -> AsyncIterator[Settings]:
    """Apex topics under this test's own prefix; deleted afterwards."""
    yield replace(
        settings,
        topic_prefix=unique_topic_prefix,
        partitions=2,
        triggers_start="earliest",
        instance_id=f"{unique_topic_prefix}instance",
    )
    mine = [t for t in await kafka_admin.list_topics() if t.startswith(unique_topic_prefix)]
    await delete_topics(kafka_admin, mine)


@pytest.fixture
async def publisher(settings: Settings) -> AsyncIterator[Publisher]:
    """``publish = await publisher(topic)``: the upstream system's producer."""
    producers = []

    async def make(topic: str) -> Publish:
        producer = make_producer(settings)
        await producer.start()
        producers.append(producer)

        async def publish(value: Any, *, key: str) -> tuple[int, int]:
            data = value if isinstance(value, bytes) else json.dumps(value).encode()
            meta = await producer.send_and_wait(topic, data, key=key.encode())
            return meta.partition, meta.offset

        return publish

    yield make
    for producer in producers:
        await producer.stop()


@pytest.fixture
async def tickets(topic_factory: MakeTopic) -> str:
    """The upstream system's own topic (not an Apex topic)."""
    return await topic_factory("shop.tickets", partitions=2)


def ticket_rules(topic: str) -> RuleSet:
    return parse_rules(
        {
            "rules": [
                {
                    "name": "ticket-opened",
                    "topic": topic,
                    "when": {"field": "$.type", "equals": "opened"},
                    "start_run": {
                        "definition": "ticket_triage",
                        "version": 1,
                        "input": {
                            "ticket_id": "$.ticket.id",
                            "subject": "$.ticket.subject",
                            "body": "$.ticket.body",
                        },
                        "idempotency_key": "$.ticket.id",
                    },
                },
                {
                    "name": "customer-replied",
                    "topic": topic,
                    "when": {"field": "$.type", "equals": "replied"},
                    "send_signal": {
                        "definition": "ticket_triage",
                        "correlation": "$.ticket.id",
                        "signal": "customer_reply",
                        "payload": "$.reply",
                    },
                },
            ]
        }
    )


def opened(ticket_id: str) -> dict[str, Any]:
    return {
        "type": "opened",
        "ticket": {"id": ticket_id, "subject": f"About {ticket_id}", "body": "It broke."},
    }


# -- tests ---------------------------------------------------------------------------------------


async def test_business_events_become_exact_commands(
    settings_for_test: Settings,
    tickets: str,
    kafka_admin: AIOKafkaAdminClient,
    publisher: Publisher,
) -> None:
    settings = settings_for_test
    publish = await publisher(tickets)
    replied = {"type": "replied", "ticket": {"id": "T-1"}, "reply": {"text": "Any news?"}}
    positions = [
        await publish(opened("T-1"), key="T-1"),
        await publish(replied, key="T-1"),
        await publish({"type": "closed", "ticket": {"id": "T-1"}}, key="T-1"),
    ]
    service = TriggerService(settings, ticket_rules(tickets))

    async with running(service):
        await until_consumed(kafka_admin, service.group, tickets)
    commands = await read_commands(settings)

    (p0, o0), (p1, o1), _ = positions
    assert isinstance(commands[0][1], StartRun)
    run_id = run_id_for("ticket_triage", "T-1")
    start = StartRun(
        command_id=f"trigger:ticket-opened:{tickets}:{p0}:{o0}",
        run_id=run_id,
        issued_at_ms=commands[0][1].issued_at_ms,
        definition_name="ticket_triage",
        definition_version=1,
        input={"ticket_id": "T-1", "subject": "About T-1", "body": "It broke."},
        idempotency_key="T-1",
        jitter_seed=commands[0][1].jitter_seed,  # derived from the run id (unit-tested)
    )
    signal = SendSignal(
        command_id=f"trigger:customer-replied:{tickets}:{p1}:{o1}",
        run_id=run_id,
        issued_at_ms=commands[1][1].issued_at_ms,
        name="customer_reply",
        payload={"text": "Any news?"},
        correlation_key="T-1",
    )
    assert [command for _, command, _ in commands] == [start, signal]
    assert [key for key, _, _ in commands] == [run_id.encode(), run_id.encode()]
    assert [(h[RULE_HEADER], h[SOURCE_HEADER]) for _, _, h in commands] == [
        ("ticket-opened", f"{tickets}/{p0}/{o0}"),
        ("customer-replied", f"{tickets}/{p1}/{o1}"),
    ]
    assert (service.stats.records, service.stats.commands, service.stats.unmatched) == (3, 2, 1)
    assert await read_all(settings.topic("dlq")) == []


async def test_a_redelivered_business_event_starts_the_same_run(
    settings_for_test: Settings,
    tickets: str,
    kafka_admin: AIOKafkaAdminClient,
    publisher: Publisher,
) -> None:
    settings = settings_for_test
    publish = await publisher(tickets)
    first = await publish(opened("T-2"), key="T-2")
    again = await publish(opened("T-2"), key="T-2")  # the upstream system sent it twice
    service = TriggerService(settings, ticket_rules(tickets))

    async with running(service):
        await until_consumed(kafka_admin, service.group, tickets)
    a, b = await read_starts(settings)

    assert a.run_id == b.run_id == run_id_for("ticket_triage", "T-2")
    assert a.idempotency_key == b.idempotency_key == "T-2"
    assert (a.input, a.jitter_seed) == (b.input, b.jitter_seed)
    assert [a.command_id, b.command_id] == [
        f"trigger:ticket-opened:{tickets}:{first[0]}:{first[1]}",
        f"trigger:ticket-opened:{tickets}:{again[0]}:{again[1]}",
    ]


async def test_a_malformed_record_goes_to_the_dlq_and_the_next_is_processed(
    settings_for_test: Settings,
    tickets: str,
    kafka_admin: AIOKafkaAdminClient,
    publisher: Publisher,
) -> None:
    settings = settings_for_test
    publish = await publisher(tickets)
    bad_partition, bad_offset = await publish(b'{"type": "opened", "ticket": ', key="T-3")
    await publish(opened("T-3"), key="T-3")
    service = TriggerService(settings, ticket_rules(tickets))

    async with running(service):
        await until_consumed(kafka_admin, service.group, tickets)
    commands = await read_commands(settings)
    letters = await read_all(settings.topic("dlq"))

    [(key, value, headers)] = letters
    assert (key, value) == (b"T-3", b'{"type": "opened", "ticket": ')
    assert headers[dlq.REASON].startswith("DecodeError: not JSON")
    assert headers[dlq.STAGE] == "triggers.decode"
    assert (headers[dlq.SOURCE_TOPIC], headers[dlq.SOURCE_PARTITION]) == (
        tickets,
        str(bad_partition),
    )
    assert headers[dlq.SOURCE_OFFSET] == str(bad_offset)
    [(_, start, _)] = commands
    assert isinstance(start, StartRun)
    assert start.idempotency_key == "T-3"
    assert service.stats.dead_letters == 1


async def test_an_event_missing_a_required_field_goes_to_the_dlq_naming_the_rule(
    settings_for_test: Settings,
    tickets: str,
    kafka_admin: AIOKafkaAdminClient,
    publisher: Publisher,
) -> None:
    settings = settings_for_test
    publish = await publisher(tickets)
    await publish({"type": "opened", "ticket": {"subject": "no id"}}, key="x")
    await publish(opened("T-4"), key="x")
    service = TriggerService(settings, ticket_rules(tickets))

    async with running(service):
        await until_consumed(kafka_admin, service.group, tickets)

    [(_, _, headers)] = await read_all(settings.topic("dlq"))
    assert headers[dlq.STAGE] == "triggers.rule.ticket-opened"
    assert headers[dlq.REASON] == (
        "ExtractionError: rule 'ticket-opened', start_run.idempotency_key: "
        "$.ticket.id is missing: no key 'id' at $.ticket"
    )
    assert [c.idempotency_key for c in await read_starts(settings)] == ["T-4"]


async def test_a_restarted_service_resumes_after_what_it_committed(
    settings_for_test: Settings,
    tickets: str,
    kafka_admin: AIOKafkaAdminClient,
    publisher: Publisher,
) -> None:
    settings = settings_for_test
    publish = await publisher(tickets)
    rules = ticket_rules(tickets)
    await publish(opened("T-5"), key="T-5")
    first = TriggerService(settings, rules)
    async with running(first):
        await until_consumed(kafka_admin, first.group, tickets)
    await publish(opened("T-6"), key="T-6")

    second = TriggerService(settings, rules)
    async with running(second):
        await until_consumed(kafka_admin, second.group, tickets)

    keys = sorted(c.idempotency_key for c in await read_starts(settings))
    assert keys == ["T-5", "T-6"]
    assert second.stats.records == 1


async def test_a_new_group_at_latest_skips_history_but_misses_nothing_after_it_started(
    settings_for_test: Settings,
    tickets: str,
    kafka_admin: AIOKafkaAdminClient,
    publisher: Publisher,
) -> None:
    settings = replace(settings_for_test, triggers_start="latest")
    publish = await publisher(tickets)
    rules = ticket_rules(tickets)
    await publish(opened("old"), key="old")
    first = TriggerService(settings, rules)
    async with running(first):
        # Its start position is committed for every partition before any new event.
        await until_consumed(kafka_admin, first.group, tickets)
    await publish(opened("new"), key="new")  # while no trigger service runs

    second = TriggerService(settings, rules)
    async with running(second):
        await until_consumed(kafka_admin, second.group, tickets)

    assert [c.idempotency_key for c in await read_starts(settings)] == ["new"]
    assert first.stats.records == 0


async def test_avro_business_events_trigger_runs(
    settings_for_test: Settings,
    topic_factory: MakeTopic,
    kafka_admin: AIOKafkaAdminClient,
    publisher: Publisher,
    tmp_path: Path,
) -> None:
    settings = settings_for_test
    topic = await topic_factory("shop.orders")
    schema = {
        "type": "record",
        "name": "shop.OrderPlaced",
        "fields": [{"name": "order_id", "type": "long"}, {"name": "total", "type": "double"}],
    }
    (tmp_path / "order.avsc").write_text(json.dumps(schema))
    rules = parse_rules(
        {
            "rules": [
                {
                    "name": "order-placed",
                    "topic": topic,
                    "format": "avro",
                    "schema": "order.avsc",
                    "start_run": {
                        "definition": "fulfil",
                        "input": {"order": "$.order_id", "total": "$.total"},
                        "idempotency_key": "$.order_id",
                    },
                }
            ]
        },
        base_dir=tmp_path,
    )
    parsed = parse_schema(schema)
    assert isinstance(parsed, dict)
    header = codec.MAGIC + codec.parsing_fingerprint(parsed).to_bytes(8, "little")
    publish = await publisher(topic)
    await publish(header + avro(parsed, {"order_id": 7, "total": 9.5}), key="7")  # single-object
    await publish(avro(parsed, {"order_id": 8, "total": 1.0}), key="8")  # plain binary
    service = TriggerService(settings, rules)

    async with running(service):
        await until_consumed(kafka_admin, service.group, topic)

    starts = sorted((c.idempotency_key, c.run_id, c.input) for c in await read_starts(settings))
    assert starts == [
        ("7", run_id_for("fulfil", "7"), {"order": 7, "total": 9.5}),
        ("8", run_id_for("fulfil", "8"), {"order": 8, "total": 1.0}),
    ]


async def test_the_service_waits_for_a_missing_upstream_topic(
    settings_for_test: Settings,
    topic_factory: MakeTopic,
    kafka_admin: AIOKafkaAdminClient,
    publisher: Publisher,
) -> None:
    settings = settings_for_test
    late = f"{settings.topic_prefix}late.tickets"  # the name topic_factory("late.tickets") makes
    service = TriggerService(settings, ticket_rules(late))

    async with running(service):
        await asyncio.sleep(1.0)  # waiting: the service never creates an upstream topic
        assert late not in await kafka_admin.list_topics()
        assert await topic_factory("late.tickets") == late
        await (await publisher(late))(opened("T-7"), key="T-7")
        await until_consumed(kafka_admin, service.group, late)

    assert [c.idempotency_key for c in await read_starts(settings)] == ["T-7"]


async def test_stop_while_waiting_for_a_missing_topic_returns_promptly(
    settings_for_test: Settings,
) -> None:
    service = TriggerService(settings_for_test, ticket_rules("no.such.topic.for.triggers"))
    task = asyncio.create_task(service.run())
    await asyncio.sleep(1.0)

    service.stop()

    await asyncio.wait_for(task, 5.0)


# -- helpers -------------------------------------------------------------------------------------


@asynccontextmanager
async def running(service: TriggerService) -> AsyncIterator[None]:
    """Run the service in this event loop; stop it (bounded) on the way out."""
    task = asyncio.create_task(service.run())
    try:
        yield
        if task.done():
            task.result()  # a crash of the service is the test's failure
    finally:
        service.stop()
        await asyncio.wait_for(task, WAIT_S)


async def until_consumed(admin: AIOKafkaAdminClient, group: str, topic: str) -> None:
    """Wait until the group's committed offsets reach the end of every partition of ``topic``.

    The trigger service commits offsets in the transaction of the commands they
    caused, so by then those commands are committed and readable.
    """
    consumer = make_consumer(Settings.from_env())
    await consumer.start()
    try:
        partitions = await admin.describe_topics([topic])
        tps = [TopicPartition(topic, p["partition"]) for p in partitions[0]["partitions"]]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
        committed = {tp: meta.offset for tp, meta in offsets.items()}
        if all(committed.get(tp, -1) >= end for tp, end in ends.items()):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"group {group} committed {committed} of {ends} after {WAIT_S}s")
        await asyncio.sleep(0.1)


async def read_commands(settings: Settings) -> list[tuple[bytes | None, Command, dict[str, str]]]:
    """Every committed command, in (partition, offset) order."""
    records = await read_all(settings.topic("commands"))
    return [(key, codec.decode_command(value or b""), headers) for key, value, headers in records]


async def read_starts(settings: Settings) -> list[StartRun]:
    commands = [command for _, command, _ in await read_commands(settings)]
    assert all(isinstance(c, StartRun) for c in commands), commands
    return [c for c in commands if isinstance(c, StartRun)]


async def read_all(topic: str) -> list[Record]:
    """Every committed record of ``topic`` up to its end, read_committed, bounded."""
    consumer = make_consumer(Settings.from_env(), fetch_max_wait_ms=50)
    await consumer.start()
    out: list[Record] = []
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert tps, f"topic {topic} does not exist"
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = asyncio.get_running_loop().time() + WAIT_S
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"{tp} not read to {ends[tp]} within {WAIT_S}s")
                batch = await consumer.getmany(tp, timeout_ms=200)
                for record in batch.get(tp, ()):
                    headers = {k: bytes(v).decode() for k, v in record.headers or ()}
                    out.append((record.key, record.value, headers))
    finally:
        await consumer.stop()
    return out


def avro(schema: Any, record: dict[str, Any]) -> bytes:
    buffer = BytesIO()
    schemaless_writer(buffer, schema, record)
    return buffer.getvalue()
