"""A whole Apex deployment of a test module's own, for the client, CLI and gateway tests.

``deployment`` (module-scoped) gives new topics (a unique prefix) and a new
read-model schema, migrated, with the runtime (orchestrator, timers, a worker
running :data:`AGENTS`) and a projector running in-process on the real Kafka
and PostgreSQL. Tests of one module share it; each uses workflow names of its
own (:func:`hello`, :func:`gated`, :func:`signalled` take a name), so filters
by definition keep their results apart. Topics and schema are dropped at the end.

:class:`GatewayServer` runs the HTTP gateway on uvicorn in a thread with its
own event loop (a real socket on 127.0.0.1), so sync tests (schemathesis) and
async tests can both call it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import pytest
import uvicorn
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from apex import Retry, TaskContext, Workflow, WorkflowDefinition, agent
from apex.config import Settings
from apex.devstack.topics import delete_topics
from apex.gateway import GatewaySettings, create_app
from apex.gateway.keys import CreatedKey
from apex.projections.migrate import migrate
from streams.projector import Projector
from tests.integration.runtime import Runtime

T = TypeVar("T")


@agent("cl-echo")
async def echo(input: Any, ctx: TaskContext) -> Any:
    return {"echo": input, "step": ctx.step_id}


AGENTS = [echo]


def hello(name: str) -> WorkflowDefinition:
    """One published step that echoes the run input ``{"who": ...}``."""
    wf = Workflow(name, input={"who": "string"}, description="says hello")
    wf.step("greet", "cl-echo", inputs={"who": wf.input.who}, publish=True)
    return wf.build()


def gated(name: str) -> WorkflowDefinition:
    """``prepare`` then ``ship``, which waits for a human's approval first."""
    wf = Workflow(name)
    prepare = wf.step("prepare", "cl-echo", retry=Retry(max_attempts=1))
    wf.step("ship", "cl-echo", after=[prepare], approval="before")
    return wf.build()


def signalled(name: str) -> WorkflowDefinition:
    """One step that waits for the signal ``go``; its payload is the step's input."""
    wf = Workflow(name)
    wf.step("wait", "cl-echo", wait_for_signal="go")
    return wf.build()


@dataclass
class Deployment:
    settings: Settings
    engine: AsyncEngine
    runtime: Runtime

    @property
    def client(self) -> Any:
        return self.runtime.client


@pytest.fixture(scope="module")
async def deployment(
    settings: Settings, kafka_admin: AIOKafkaAdminClient, stack: Any
) -> AsyncIterator[Deployment]:
    prefix = f"test.client.{uuid.uuid4().hex[:8]}."
    schema = f"test_{uuid.uuid4().hex[:16]}"
    s = replace(
        settings,
        topic_prefix=prefix,
        partitions=3,
        session_timeout_ms=6000,
        read_model_schema=schema,
    )
    engine = create_async_engine(s.sqlalchemy_url)
    try:
        await migrate(engine, schema)
        projector = Projector(s, engine)
        projecting = asyncio.create_task(projector.run())
        try:
            async with Runtime(s, AGENTS) as runtime:
                yield Deployment(s, engine, runtime)
        finally:
            projector.stop()
            await asyncio.wait_for(projecting, 30)
    finally:
        async with engine.begin() as connection:
            await connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await engine.dispose()
        topics = [t for t in await kafka_admin.list_topics() if t.startswith(prefix)]
        await delete_topics(kafka_admin, topics)


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout_s: float = 20.0, what: str = ""
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` if it never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.1)


class GatewayServer:
    """The gateway on uvicorn, in a thread of its own: ``with GatewayServer(...) as gw:``."""

    def __init__(self, settings: Settings, options: GatewaySettings) -> None:
        self.app = create_app(settings, options)
        self.options = options
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._serving: Future[None] | None = None
        self.url = ""

    def __enter__(self) -> GatewayServer:
        self._thread.start()
        self._serving = asyncio.run_coroutine_threadsafe(self.server.serve(), self._loop)
        deadline = time.monotonic() + 30
        while not self.server.started:
            if self._serving.done():
                self._serving.result()  # raises what stopped it
                raise RuntimeError("the gateway stopped during startup")
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway did not start within 30 s")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self._serving is not None:
            self._serving.result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the gateway's loop, blocking (for sync code)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    async def acall(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the gateway's loop, awaiting (for async tests)."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    def new_key(self, tenant: str, *scopes: str, name: str = "") -> Coroutine[Any, Any, str]:
        """``await server.acall(server.new_key(...))`` -> the full API key."""

        async def create() -> str:
            created: CreatedKey = await self.app.state.gateway.keys.create(tenant, scopes, name)
            return created.secret_key

        return create()
