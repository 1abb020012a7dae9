"""A varied workload on the real runtime, and helpers to watch the read models.

``run_workload`` drives orchestrator + timers + workers (``Runtime``) through
runs that succeed, retry after a failure (a backoff timer), fail for good, wait
at an approval gate that is granted or rejected, and get cancelled mid-way —
so every read-model table gets rows of every kind. A projector may run beside
it (``projector=``), as in production.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from apex.config import Settings
from apex.devstack.topics import delete_topics
from apex.domain import events as ev
from apex.domain.definitions import (
    ApprovalGate,
    Condition,
    ConditionOp,
    GateWhen,
    RetryPolicy,
    StepDefinition,
    WorkflowDefinition,
    parse_ref,
)
from apex.kafka.event_log import EventLogReader
from apex.projections.migrate import migrate
from apex.projections.schema import TABLES
from apex.projections.store import read_checkpoints, read_table
from apex.worker import FatalError, RetryableError, TaskContext, agent
from streams.projector import Projector
from tests.integration.runtime import Runtime, of_type

TRIAGE = WorkflowDefinition(
    name="triage",
    version=1,
    steps=(
        StepDefinition(id="fetch", capability="wl-fetch"),
        StepDefinition(
            id="classify",
            capability="wl-classify",
            depends_on=("fetch",),
            retry=RetryPolicy(max_attempts=3, initial_backoff_ms=100),
            inputs={"text": parse_ref("$.steps.fetch.output.text")},
        ),
        StepDefinition(
            id="act",
            capability="wl-act",
            depends_on=("classify",),
            approval=ApprovalGate(
                GateWhen.BEFORE,
                deadline_ms=600_000,
                condition=Condition(parse_ref("$.input.priority"), ConditionOp.EQ, "high"),
            ),
        ),
        StepDefinition(id="notify", capability="wl-fetch", depends_on=("act",)),
    ),
)

FRAGILE = WorkflowDefinition(
    name="fragile",
    version=2,
    steps=(
        StepDefinition(id="a", capability="wl-fetch"),
        StepDefinition(id="b", capability="wl-broken", depends_on=("a",)),
        StepDefinition(id="c", capability="wl-fetch", depends_on=("b",)),
    ),
)

SLOW = WorkflowDefinition(
    name="slow",
    version=1,
    steps=(
        StepDefinition(id="wait", capability="wl-block"),
        StepDefinition(id="after", capability="wl-fetch", depends_on=("wait",)),
    ),
)

_release = asyncio.Event()


@agent("wl-fetch")
async def fetch(input: Any, ctx: TaskContext) -> Any:
    return {"text": f"ticket {ctx.step_id}", "n": 3, "score": 0.25}


@agent("wl-classify")
async def classify(input: Any, ctx: TaskContext) -> Any:
    if ctx.attempt == 1 and zlib.crc32(ctx.run_id.encode()) % 2 == 0:
        raise RetryableError("rate limited")  # half the runs retry after a backoff timer
    return {"label": "hardware", "attempt": ctx.attempt}


@agent("wl-act")
async def act(input: Any) -> Any:
    return {"done": True}


@agent("wl-broken")
async def broken(input: Any) -> Any:
    raise FatalError("the printer is on fire")


@agent("wl-block")
async def block(input: Any) -> Any:
    await _release.wait()
    return {}


AGENTS = [fetch, classify, act, broken, block]


async def run_workload(settings: Settings, runs: int = 12) -> list[str]:
    """Start a varied batch of runs and drive each to its end; returns their ids."""
    global _release
    # A fresh gate per workload: a second workload (a test runs two) must find its
    # blocking steps blocked again — a quick one is never reported started.
    _release = asyncio.Event()
    async with Runtime(settings, AGENTS) as rt:
        for wf in (TRIAGE, FRAGILE, SLOW):
            await rt.client.register(wf)
        low = [await rt.client.start_run("triage", {"priority": "low"}) for _ in range(runs)]
        high = [await rt.client.start_run("triage", {"priority": "high"}) for _ in range(4)]
        fragile = [await rt.client.start_run("fragile", {}) for _ in range(3)]
        slow = [await rt.client.start_run("slow", {}) for _ in range(2)]
        for run_id in high:
            await rt.wait_for(run_id, lambda h: bool(of_type(h, ev.ApprovalRequested)))
        for i, run_id in enumerate(high):
            if i % 2 == 0:
                await rt.client.approve(run_id, "act", approver="ann", comment="go")
            else:
                await rt.client.reject(run_id, "act", approver="bob", reason="too risky")
        for run_id in slow:
            await rt.wait_for(run_id, lambda h: bool(of_type(h, ev.StepStarted)))
            await rt.client.cancel(run_id, reason="customer withdrew")
        everything = low + high + fragile + slow
        for run_id in everything:
            await rt.wait_finished(run_id)
        _release.set()  # the cancelled runs' blocked tasks end (their reports are ignored)
        # A command for a finished run: a CommandRejected with a seq of its own.
        await rt.client.cancel(fragile[0], reason="too late")
        await rt.client.approve("no-such-run", "act")  # a seq-0 refusal
        await rt.wait_for(fragile[0], lambda h: isinstance(h[-1], ev.CommandRejected))
    return everything


# -- watching the read models --------------------------------------------------------------


async def end_offsets(settings: Settings, topic: str | None = None) -> dict[int, int]:
    async with EventLogReader(settings) as log:
        return await log.end_offsets(topic or settings.topic("events"))


async def wait_caught_up(
    settings: Settings, engine: AsyncEngine, schema: str, timeout_s: float = 45.0
) -> dict[int, int]:
    """Wait until every partition's checkpoint is the log's end; returns the end offsets."""
    ends = await end_offsets(settings)
    topic = settings.topic("events")
    deadline = time.monotonic() + timeout_s
    checkpoints: dict[tuple[str, int], int] = {}
    while time.monotonic() < deadline:
        async with engine.connect() as connection:
            checkpoints = await read_checkpoints(connection, schema)
        if all(checkpoints.get((topic, p), 0) == end for p, end in ends.items()):
            return ends
        await asyncio.sleep(0.2)
    raise AssertionError(f"projection not caught up in {timeout_s}s: {checkpoints} vs {ends}")


async def snapshot(
    engine: AsyncEngine, schema: str, tables: Sequence[str] | None = None
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every read-model table, in primary-key order."""
    names = tables or [t.name for t in TABLES]
    async with engine.connect() as connection:
        return {name: await read_table(connection, schema, name) for name in names}


def assert_same_tables(
    left: dict[str, list[tuple[Any, ...]]], right: dict[str, list[tuple[Any, ...]]]
) -> None:
    """Row by row, table by table, with the first differing row in the message."""
    assert left.keys() == right.keys()
    for table in left:
        a, b = left[table], right[table]
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            assert x == y, f"{table} row {i} differs:\n  {x}\n  {y}"
        assert len(a) == len(b), f"{table}: {len(a)} rows vs {len(b)}"


# -- one workload for the projection and audit tests --------------------------------------------


@dataclass
class Workload:
    """A log written by the runtime and its read models, built live by a projector."""

    settings: Settings
    engine: AsyncEngine
    run_ids: list[str]
    schemas: list[str] = field(default_factory=list)

    @property
    def schema(self) -> str:
        """The read models the live projector built (a rebuild may swap in equal ones)."""
        return self.settings.read_model_schema

    def new_schema(self) -> str:
        """A schema name of the test's own, dropped at the end of the session."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        self.schemas.append(name)
        return name

    def with_schema(self, schema: str, **overrides: Any) -> Settings:
        return replace(self.settings, read_model_schema=schema, **overrides)


_SHARED: dict[str, Workload] = {}


@pytest.fixture(scope="session")
async def workload(settings: Settings, kafka_admin: AIOKafkaAdminClient) -> AsyncIterator[Workload]:
    """Built once per session (test_projections and test_audit import it) and then only read.

    A projector runs while the runtime writes, as in production; the fixture
    returns once it has caught up with the log.
    """
    if "shared" in _SHARED:
        yield _SHARED["shared"]
        return
    prefix = f"test.projections.{uuid.uuid4().hex[:8]}."
    schema = f"test_{uuid.uuid4().hex[:16]}"
    s = replace(
        settings,
        topic_prefix=prefix,
        partitions=3,
        session_timeout_ms=6000,
        read_model_schema=schema,
    )
    engine = create_async_engine(s.sqlalchemy_url)
    shared = Workload(s, engine, [], [schema])
    _SHARED["shared"] = shared
    try:
        await migrate(engine, schema)
        projector = Projector(s, engine)
        task = asyncio.create_task(projector.run())
        try:
            shared.run_ids = await run_workload(s)
            await wait_caught_up(s, engine, schema)
        finally:
            projector.stop()
            await task
        yield shared
    finally:
        async with engine.begin() as connection:
            for name in shared.schemas:
                await connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await engine.dispose()
        topics = [t for t in await kafka_admin.list_topics() if t.startswith(prefix)]
        await delete_topics(kafka_admin, topics)
