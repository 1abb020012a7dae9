"""Schemathesis against the gateway's own OpenAPI document: no generated request gets a 5xx.

Every operation gets a few generated requests — valid ones and deliberately
invalid ones (wrong types, out-of-range numbers, odd Unicode) — sent over HTTP
to the gateway on uvicorn with a key holding every scope, on a real Kafka and
PostgreSQL of its own (new topics, a migrated read-model schema). Whatever
the input, the answer must be a success or a 4xx, never a server error.

Schemathesis' coverage phase sends its boundary cases for every operation
(each undocumented method, missing and extra fields, values at and past each
bound), deterministically; the fuzzing phase adds :data:`EXAMPLES` generated
requests per operation (derandomized, so a failure reproduces). The whole
module takes about 40 s on two cores. The result stream (``GET /v1/results``)
is left out: it is endless by design (its refusals are covered in
test_gateway.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from sqlalchemy.ext.asyncio import create_async_engine

from apex.config import Settings
from apex.gateway import GatewaySettings, create_app
from apex.projections.migrate import migrate
from tests.integration.deployment import GatewayServer, hello

EXAMPLES = 8


@pytest.fixture(scope="module")
def fuzz_server(settings: Settings, stack: Any) -> Iterator[GatewayServer]:
    prefix = f"test.openapi.{uuid.uuid4().hex[:8]}."
    read_models = f"test_{uuid.uuid4().hex[:16]}"
    keys_schema = f"test_gw_{uuid.uuid4().hex[:12]}"
    s = replace(settings, topic_prefix=prefix, partitions=1, read_model_schema=read_models)
    with GatewayServer(s, GatewaySettings(schema=keys_schema, topics="")) as server:
        server.call(_prepare(server, s))
        try:
            yield server
        finally:
            server.call(_clean_up(s, prefix, [read_models, keys_schema]))


@pytest.fixture(scope="module")
def fuzz_key(fuzz_server: GatewayServer) -> str:
    return fuzz_server.call(
        fuzz_server.new_key("fuzz", "publish", "read", "approve", "admin", name="fuzzer")
    )


# The document comes from an application that is built, not started (no I/O).
# (Not schemathesis.pytest.from_fixture: it sets pytest's private Node._nodeid,
# which pytest 9 no longer has.)
schema = schemathesis.openapi.from_dict(
    create_app(Settings.from_env(), GatewaySettings()).openapi()
).exclude(path="/v1/results")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_generated_requests_never_get_a_server_error(
    case: Any, fuzz_server: GatewayServer, fuzz_key: str
) -> None:
    response = case.call(base_url=fuzz_server.url, headers={"X-API-Key": fuzz_key}, timeout=15)

    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}\n"
        f"reproduce: {case.as_curl_command()}"
    )


async def _prepare(server: GatewayServer, s: Settings) -> None:
    engine = create_async_engine(s.sqlalchemy_url)
    try:
        await migrate(engine, s.read_model_schema)
    finally:
        await engine.dispose()
    # Something to find, so that starting a run and showing a definition can succeed.
    await server.app.state.gateway.client.register(hello("fuzzed"))


async def _clean_up(s: Settings, prefix: str, schemas: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from apex.devstack.topics import delete_topics

    engine = create_async_engine(s.sqlalchemy_url)
    try:
        async with engine.begin() as connection:
            for name in schemas:
                await connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await engine.dispose()
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
        await delete_topics(admin, topics)
    finally:
        await admin.close()
