"""``apex demo``: until the demo workflow lands, a smoke run through the real stack.

It brings the stack up if needed, publishes one event in a Kafka transaction on
a fresh topic, reads it back with ``read_committed``, and writes and reads one
row in PostgreSQL through SQLAlchemy async. Exit status 1 if any step fails.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Column, DateTime, MetaData, String, func, select
from sqlalchemy import Table as SqlTable
from sqlalchemy.ext.asyncio import create_async_engine

from apex import devstack
from apex.cli._console import console, print_error
from apex.config import Settings
from apex.devstack.topics import create_topic, delete_topics


def register(root: typer.Typer) -> None:
    root.command("demo")(demo)


def demo() -> None:
    """Smoke run: stack up, one event through a Kafka transaction, one row through PostgreSQL."""
    settings = Settings.from_env()
    run = SmokeRun(settings)
    try:
        asyncio.run(run.execute())
    except Exception as exc:
        console.print(run.table())
        print_error(f"apex demo failed at: {run.current}", f"{type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    console.print(run.table())
    console.print("[bold green]Smoke run passed:[/] Kafka and PostgreSQL work end to end.")


_metadata = MetaData()
smoke_rows = SqlTable(
    "apex_smoke",
    _metadata,
    Column("id", String, primary_key=True),
    Column("topic", String, nullable=False),
    Column("payload", String, nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)


@dataclass
class SmokeRun:
    settings: Settings
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    steps: list[tuple[str, str, float]] = field(default_factory=list)
    current: str = "not started"

    @property
    def topic(self) -> str:
        return self.settings.topic(f"smoke.{self.run_id[:12]}")

    async def execute(self) -> None:
        event = {"type": "SmokeEvent", "run_id": self.run_id, "at": time.time()}
        value = json.dumps(event, sort_keys=True).encode()
        await self._step("stack", self._stack)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        await admin.start()
        try:
            await self._step("create topic", lambda: self._create_topic(admin))
            await self._step("produce (transaction)", lambda: self._produce(value))
            await self._step("consume (read_committed)", lambda: self._consume(value))
            await self._step("postgres write + read", lambda: self._postgres(value))
            await self._step("delete topic", lambda: self._delete_topic(admin))
        finally:
            await admin.close()

    async def _step(self, name: str, action: Callable[[], Awaitable[str]]) -> None:
        self.current = name
        started = time.perf_counter()
        outcome = await action()
        self.steps.append((name, outcome, (time.perf_counter() - started) * 1000))

    async def _stack(self) -> str:
        report = await devstack.ensure_stack(self.settings)
        return ", ".join(f"{s.name} {s.state} on {s.address}" for s in report)

    async def _create_topic(self, admin: AIOKafkaAdminClient) -> str:
        await create_topic(admin, self.topic, replication_factor=self.settings.replication_factor)
        return self.topic

    async def _produce(self, value: bytes) -> str:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            transactional_id=f"apex-smoke-{self.run_id}",
            enable_idempotence=True,
            acks="all",
        )
        await producer.start()
        try:
            async with producer.transaction():
                sent = await producer.send_and_wait(self.topic, value, key=self.run_id.encode())
        finally:
            await producer.stop()
        return f"committed at partition {sent.partition} offset {sent.offset}"

    async def _consume(self, expected: bytes) -> str:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(self.topic, 0)])
            message = await asyncio.wait_for(consumer.getone(), timeout=15)
        finally:
            await consumer.stop()
        if message.value != expected:
            raise AssertionError(f"read back {message.value!r}, expected {expected!r}")
        return f"read back {len(expected)} bytes at offset {message.offset}"

    async def _postgres(self, value: bytes) -> str:
        engine = create_async_engine(self.settings.sqlalchemy_url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_metadata.create_all)
                await conn.execute(
                    smoke_rows.insert().values(
                        id=self.run_id, topic=self.topic, payload=value.decode()
                    )
                )
            async with engine.connect() as conn:
                row: Any = (
                    await conn.execute(select(smoke_rows).where(smoke_rows.c.id == self.run_id))
                ).one()
        finally:
            await engine.dispose()
        if row.payload != value.decode():
            raise AssertionError(f"row payload {row.payload!r} differs from the event")
        return f"row {self.run_id[:12]} in table apex_smoke at {row.created_at:%H:%M:%S}"

    async def _delete_topic(self, admin: AIOKafkaAdminClient) -> str:
        await delete_topics(admin, [self.topic])
        return self.topic

    def table(self) -> Table:
        table = Table(title=f"Smoke run {self.run_id[:12]}")
        table.add_column("Step")
        table.add_column("Result")
        table.add_column("ms", justify="right")
        for name, outcome, millis in self.steps:
            table.add_row(name, escape(outcome), f"{millis:.1f}")
        return table
