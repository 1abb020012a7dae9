"""Fixtures of the whole suite.

Tests under ``tests/integration/`` are marked ``integration`` automatically and
run against the real Kafka and PostgreSQL: the ``stack`` fixture reuses the
stack when it answers and starts it (``apex dev up``) when it does not. If it
cannot, every integration test fails with the reason and the service's log
tail; nothing is skipped. Unit tests never touch the stack.

Isolation: each test gets its own Kafka topics (unique names from
``unique_topic_prefix``, made by ``topic_factory`` and deleted afterwards) and
its own PostgreSQL schema (``pg_schema``, dropped afterwards), with an
``async_engine`` whose ``search_path`` is that schema.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Protocol

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from apex.config import Settings
from apex.devstack import ServiceStatus, StackError, ensure_stack
from apex.devstack.topics import create_topic, delete_topics

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


class TopicFactory(Protocol):
    """``await topic_factory("events", partitions=3, configs={...})`` -> full topic name."""

    async def __call__(
        self,
        name: str = "topic",
        *,
        partitions: int = 1,
        configs: Mapping[str, str] | None = None,
    ) -> str: ...


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings from the environment (``APEX_*``), as the CLI reads them."""
    return Settings.from_env()


@pytest.fixture(scope="session")
async def stack(settings: Settings) -> list[ServiceStatus]:
    """Kafka and PostgreSQL answering; started if needed. Fails loudly, never skips."""
    try:
        return await ensure_stack(settings)
    except StackError as exc:
        reason = str(exc)
    pytest.fail(f"the Kafka + PostgreSQL stack is not available:\n{reason}", pytrace=False)


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: list[ServiceStatus], settings: Settings) -> str:
    """Bootstrap servers of the running broker."""
    return settings.kafka_bootstrap


@pytest.fixture(scope="session")
async def kafka_admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    yield admin
    await admin.close()


@pytest.fixture
def unique_topic_prefix(request: pytest.FixtureRequest) -> str:
    """``test.<test name>.<random>.``: no two tests (or runs) share a topic."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:80]
    return f"test.{name}.{uuid.uuid4().hex[:8]}."


@pytest.fixture
async def topic_factory(
    kafka_admin: AIOKafkaAdminClient, unique_topic_prefix: str, settings: Settings
) -> AsyncIterator[TopicFactory]:
    """Creates topics named ``<unique_topic_prefix><name>``; deletes them after the test."""
    created: list[str] = []

    async def create(
        name: str = "topic", *, partitions: int = 1, configs: Mapping[str, str] | None = None
    ) -> str:
        topic = unique_topic_prefix + name
        await create_topic(
            kafka_admin,
            topic,
            partitions=partitions,
            replication_factor=settings.replication_factor,
            configs=configs,
        )
        created.append(topic)
        return topic

    yield create
    await delete_topics(kafka_admin, created)


@pytest.fixture(scope="session")
async def pg_admin_engine(
    stack: list[ServiceStatus], settings: Settings
) -> AsyncIterator[AsyncEngine]:
    """Engine on the default search_path; creates and drops the per-test schemas."""
    engine = create_async_engine(settings.sqlalchemy_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def pg_schema(pg_admin_engine: AsyncEngine) -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL schema for this test; dropped (cascade) afterwards."""
    schema = f"test_{uuid.uuid4().hex[:16]}"
    async with pg_admin_engine.begin() as conn:
        await conn.execute(text(f'create schema "{schema}"'))
    yield schema
    async with pg_admin_engine.begin() as conn:
        await conn.execute(text(f'drop schema if exists "{schema}" cascade'))


@pytest.fixture
async def async_engine(pg_schema: str, settings: Settings) -> AsyncIterator[AsyncEngine]:
    """SQLAlchemy async engine (asyncpg) whose connections use ``pg_schema`` only."""
    engine = create_async_engine(
        settings.sqlalchemy_url,
        connect_args={"server_settings": {"search_path": pg_schema}},
    )
    yield engine
    await engine.dispose()


@pytest.fixture
def apex_settings(settings: Settings, unique_topic_prefix: str) -> Settings:
    """Settings of an Apex deployment of the test's own: every topic and group is new."""
    from dataclasses import replace

    return replace(
        settings, topic_prefix=unique_topic_prefix, partitions=3, session_timeout_ms=6000
    )
