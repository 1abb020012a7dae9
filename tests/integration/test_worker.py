"""Agent workers on the real broker: reports, limits, heartbeats, shutdown, redelivery.

Each test has its own topic prefix (so its own topics and consumer groups),
publishes ``TaskDispatch`` records as the orchestrator would, runs workers
in-process (or ``apex worker`` as a subprocess) and reads the reports back from
the commands topic. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from apex import codec
from apex.config import REPO_ROOT, Settings
from apex.devstack.topics import delete_topics
from apex.domain.commands import (
    Command,
    ReportTaskFailed,
    ReportTaskHeartbeat,
    ReportTaskStarted,
    ReportTaskSucceeded,
)
from apex.domain.messages import TaskDispatch
from apex.kafka.clients import make_consumer, make_producer
from apex.kafka.dlq import REASON, SOURCE_OFFSET, header
from apex.kafka.topology import ensure_topics, task_topic
from apex.worker import FatalError, RetryableError, TaskContext, Worker, agent

WAIT_S = 30.0
"""Upper bound of any wait for Kafka (group joins included); tests end well before."""


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
async def wsettings(
    settings: Settings, unique_topic_prefix: str, kafka_admin: AIOKafkaAdminClient
) -> AsyncIterator[Settings]:
    """Settings of this test's own topics and groups; the topics are deleted afterwards."""
    yield replace(
        settings,
        topic_prefix=unique_topic_prefix,
        partitions=2,
        worker_commit_interval_s=0.2,
        worker_grace_s=5.0,
        worker_heartbeat_s=0.0,
    )
    ours = [t for t in await kafka_admin.list_topics() if t.startswith(unique_topic_prefix)]
    await delete_topics(kafka_admin, ours)


class Reports:
    """Reads the commands topic from the beginning; waits for what a test expects."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: list[Command] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> Reports:
        topic = self.settings.topic("commands")
        self._consumer = make_consumer(self.settings)
        await self._consumer.start()
        tps = [TopicPartition(topic, p) for p in range(self.settings.partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._consumer is not None
        await self._consumer.stop()

    async def until(self, done: Callable[[list[Command]], bool], what: str) -> list[Command]:
        """Read until ``done(seen)``; fail the test after :data:`WAIT_S`."""
        assert self._consumer is not None
        deadline = time.monotonic() + WAIT_S
        while not done(self.seen):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; reports seen: {self.seen}")
            batch = await self._consumer.getmany(timeout_ms=100)
            for records in batch.values():
                self.seen.extend(codec.decode_command(r.value) for r in records)
        return self.seen

    async def outcomes(self, count: int) -> list[ReportTaskSucceeded | ReportTaskFailed]:
        """Wait for ``count`` outcome reports (succeeded or failed); return them."""
        await self.until(lambda seen: len(_outcomes(seen)) >= count, f"{count} outcomes")
        return _outcomes(self.seen)


def _outcomes(commands: Sequence[Command]) -> list[ReportTaskSucceeded | ReportTaskFailed]:
    return [c for c in commands if isinstance(c, ReportTaskSucceeded | ReportTaskFailed)]


def _dispatch(
    capability: str,
    step_id: str,
    input: Any,
    *,
    run_id: str = "run-1",
    timeout_ms: int | None = None,
) -> TaskDispatch:
    return TaskDispatch(
        run_id=run_id,
        step_id=step_id,
        attempt=1,
        capability=capability,
        input=input,
        timeout_ms=timeout_ms,
        dispatched_at_ms=time.time_ns() // 1_000_000,
        definition="test@1",
        correlation_id=f"corr-{step_id}",
    )


async def _publish(settings: Settings, *items: TaskDispatch | tuple[str, bytes]) -> None:
    """Send dispatches (or raw ``(capability, bytes)``) to their task topics, keyed by run."""
    producer = make_producer(settings)
    await producer.start()
    try:
        for item in items:
            if isinstance(item, TaskDispatch):
                topic, key, value = (
                    task_topic(settings, item.capability),
                    item.run_id.encode(),
                    codec.encode_dispatch(item),
                )
            else:
                topic, key, value = task_topic(settings, item[0]), b"run-1", item[1]
            await (await producer.send(topic, value=value, key=key))
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def _running(worker: Worker) -> AsyncIterator[Worker]:
    """Run ``worker`` in the background; stop it (bounded) when the block ends."""
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, worker.grace_s + WAIT_S)


# -- reports ------------------------------------------------------------------------------------


async def test_success_is_reported_after_started_with_the_dispatch_ids(wsettings: Settings) -> None:
    @agent("summarize")
    async def summarize(input: Any, ctx: TaskContext) -> Any:
        return {"summary": input["text"][:5], "step": ctx.step_id, "corr": ctx.correlation_id}

    await ensure_topics(wsettings, ["summarize"])
    dispatches = [_dispatch("summarize", f"s{i}", {"text": f"ticket {i}"}) for i in range(3)]
    await _publish(wsettings, *dispatches)
    # Every start reported at once (by default, quick tasks report only their outcome).
    at_once = dataclasses.replace(wsettings, worker_started_after_ms=0)
    worker = Worker(at_once, [summarize], worker_id="w-success")
    async with Reports(wsettings) as reports, _running(worker):
        outcomes = await reports.outcomes(3)

    assert {(o.step_id, type(o)) for o in outcomes} == {
        (f"s{i}", ReportTaskSucceeded) for i in range(3)
    }
    for outcome in outcomes:
        assert isinstance(outcome, ReportTaskSucceeded)
        assert outcome.output == {
            "summary": "ticke",
            "step": outcome.step_id,
            "corr": f"corr-{outcome.step_id}",
        }
        assert outcome.command_id == f"run-1/{outcome.step_id}/1/succeeded"
        assert (outcome.worker_id, outcome.correlation_id) == (
            "w-success",
            f"corr-{outcome.step_id}",
        )
    # One run, one partition, one producer: each step's start precedes its outcome.
    kinds = [(getattr(c, "step_id", None), type(c)) for c in reports.seen]
    for i in range(3):
        assert kinds.index((f"s{i}", ReportTaskStarted)) < kinds.index(
            (f"s{i}", ReportTaskSucceeded)
        )
    assert worker.stats.succeeded == 3


async def test_failures_are_reported_retryable_or_not(wsettings: Settings) -> None:
    class Unsupported(Exception):
        pass

    errors: dict[str, Exception] = {
        "fatal": FatalError("ticket has no body"),
        "value": ValueError("priority 'urgent!!' unknown"),
        "retry": RetryableError("rate limited"),
        "runtime": RuntimeError("model hiccup"),
        "custom": Unsupported("language tlh"),
    }

    @agent("classify", non_retryable=(Unsupported, ValueError))
    async def classify(input: Any) -> Any:
        raise errors[input["kind"]]

    await ensure_topics(wsettings, ["classify"])
    await _publish(wsettings, *(_dispatch("classify", k, {"kind": k}) for k in errors))
    async with Reports(wsettings) as reports, _running(Worker(wsettings, [classify])):
        outcomes = await reports.outcomes(len(errors))

    reported = {o.step_id: o for o in outcomes if isinstance(o, ReportTaskFailed)}
    assert {k: (f.retryable, f.error) for k, f in reported.items()} == {
        "fatal": (False, "FatalError: ticket has no body"),
        "value": (False, "ValueError: priority 'urgent!!' unknown"),
        "retry": (True, "RetryableError: rate limited"),
        "runtime": (True, "RuntimeError: model hiccup"),
        "custom": (False, "Unsupported: language tlh"),
    }


async def test_undecodable_dispatch_goes_to_the_dlq_and_the_next_one_runs(
    wsettings: Settings,
) -> None:
    @agent("parse")
    async def parse(input: Any) -> Any:
        return input

    await ensure_topics(wsettings, ["parse"])
    await _publish(wsettings, ("parse", b"\xc3\x01garbage"), _dispatch("parse", "after", {"n": 1}))
    worker = Worker(wsettings, [parse])
    async with Reports(wsettings) as reports, _running(worker):
        [outcome] = await reports.outcomes(1)
    assert isinstance(outcome, ReportTaskSucceeded)
    assert outcome.step_id == "after"
    assert worker.stats.dead_letters == 1

    dlq = make_consumer(wsettings)
    await dlq.start()
    try:
        tp = TopicPartition(wsettings.topic("dlq"), 0)
        dlq.assign([tp])
        await dlq.seek_to_beginning(tp)
        batch = await dlq.getmany(tp, timeout_ms=int(WAIT_S * 1000))
    finally:
        await dlq.stop()
    [letter] = batch[tp]
    assert letter.value == b"\xc3\x01garbage"
    assert "CodecError" in (header(letter.headers, REASON) or "")
    assert header(letter.headers, SOURCE_OFFSET) == "0"


# -- limits and liveness ---------------------------------------------------------------------------


async def test_concurrency_limit_is_honoured(wsettings: Settings) -> None:
    limit, tasks = 3, 9
    running = 0
    most = 0
    reached = asyncio.Event()

    @agent("translate", concurrency=limit)
    async def translate(input: Any) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running >= limit:
            reached.set()
        try:
            # Hold the slot until the limit is reached once, so the test shows the
            # worker fills its slots; were the limit ignored, `most` would exceed it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reached.wait(), 5.0)
            await asyncio.sleep(0.02)
        finally:
            running -= 1
        return input

    await ensure_topics(wsettings, ["translate"])
    await _publish(wsettings, *(_dispatch("translate", f"t{i}", i) for i in range(tasks)))
    async with Reports(wsettings) as reports, _running(Worker(wsettings, [translate])):
        outcomes = await reports.outcomes(tasks)

    assert all(isinstance(o, ReportTaskSucceeded) for o in outcomes)
    assert most == limit


async def test_long_task_sends_heartbeats_derived_from_its_timeout(wsettings: Settings) -> None:
    heartbeats_seen = asyncio.Event()
    reports = Reports(wsettings)

    @agent("research")
    async def research(input: Any, ctx: TaskContext) -> Any:
        # Finish only once the test has read two heartbeats from Kafka.
        await asyncio.wait_for(heartbeats_seen.wait(), WAIT_S)
        return {"cancelled": ctx.cancelled.is_set()}

    def two_heartbeats(seen: list[Command]) -> bool:
        if len([c for c in seen if isinstance(c, ReportTaskHeartbeat)]) >= 2:
            heartbeats_seen.set()
        return bool(_outcomes(seen))

    await ensure_topics(wsettings, ["research"])
    # timeout 600 ms: a heartbeat every 200 ms, and the task never times out.
    await _publish(wsettings, _dispatch("research", "deep", {"q": "x"}, timeout_ms=600))
    async with reports, _running(Worker(wsettings, [research])):
        await reports.until(two_heartbeats, "two heartbeats, then the outcome")

    beats = [c for c in reports.seen if isinstance(c, ReportTaskHeartbeat)]
    assert [b.command_id for b in beats[:2]] == [
        "run-1/deep/1/heartbeat/1",
        "run-1/deep/1/heartbeat/2",
    ]
    [outcome] = _outcomes(reports.seen)
    assert isinstance(outcome, ReportTaskSucceeded)
    assert outcome.output == {"cancelled": False}


# -- shutdown and redelivery -----------------------------------------------------------------------


async def test_task_unfinished_at_shutdown_is_redelivered_and_finished_ones_are_not(
    wsettings: Settings,
) -> None:
    first_run: dict[str, Any] = {"received": [], "cancel_seen": None}
    second_run: list[str] = []

    @agent("route")
    async def route_then_hang(input: Any, ctx: TaskContext) -> Any:
        first_run["received"].append(ctx.step_id)
        if input["hang"]:
            try:
                await asyncio.sleep(WAIT_S * 10)
            except asyncio.CancelledError:
                first_run["cancel_seen"] = ctx.cancelled.is_set()
                raise
        return {"routed": ctx.step_id}

    @agent("route")
    async def route(input: Any, ctx: TaskContext) -> Any:
        second_run.append(ctx.step_id)
        return {"routed": ctx.step_id}

    await ensure_topics(wsettings, ["route"])
    # One run, so one partition: offsets 0 and 1 finish, offset 2 hangs.
    await _publish(
        wsettings,
        _dispatch("route", "fast-1", {"hang": False}),
        _dispatch("route", "fast-2", {"hang": False}),
        _dispatch("route", "hangs", {"hang": True}),
    )
    first = Worker(wsettings, [route_then_hang], worker_id="first", grace_s=0.3)
    async with Reports(wsettings) as reports:
        async with _running(first):
            await reports.until(
                lambda seen: (
                    len(_outcomes(seen)) == 2
                    and any(isinstance(c, ReportTaskStarted) and c.step_id == "hangs" for c in seen)
                ),
                "two outcomes and the start of the hanging task",
            )
        # Stopped past its grace: the hanging task was cancelled, unreported, uncommitted.
        assert first.stats.cancelled == 1
        assert first_run["cancel_seen"] is True
        run_partition = _partition_of(b"run-1", wsettings.partitions)
        assert await _committed(wsettings, first.group_of("route")) == {
            p: 2 if p == run_partition else 0 for p in range(wsettings.partitions)
        }

        second = Worker(wsettings, [route], worker_id="second")
        async with _running(second):
            await reports.until(lambda seen: len(_outcomes(seen)) == 3, "the redelivered task")

    assert sorted(first_run["received"]) == ["fast-1", "fast-2", "hangs"]
    assert second_run == ["hangs"]
    by_step = {o.step_id: o for o in _outcomes(reports.seen)}
    assert by_step["hangs"].worker_id == "second"
    assert {by_step["fast-1"].worker_id, by_step["fast-2"].worker_id} == {"first"}


async def test_dispatches_waiting_for_a_slot_at_shutdown_are_not_started_and_redelivered(
    wsettings: Settings,
) -> None:
    first_seen: list[str] = []
    second_seen: list[str] = []
    hanging = asyncio.Event()

    @agent("route", concurrency=1)
    async def hang(input: Any, ctx: TaskContext) -> Any:
        first_seen.append(ctx.step_id)
        hanging.set()
        await asyncio.sleep(WAIT_S * 10)  # cancelled when the grace period ends
        return {}

    @agent("route", concurrency=1)
    async def route(input: Any, ctx: TaskContext) -> Any:
        second_seen.append(ctx.step_id)
        return {"routed": ctx.step_id}

    await ensure_topics(wsettings, ["route"])
    # One run, so one partition, in this order. The lane's one slot takes q0; the rest
    # wait for the slot, which frees only when q0 is cancelled at shutdown: after that
    # nothing may start, and nothing past q0 may be committed.
    await _publish(wsettings, *(_dispatch("route", f"q{i}", {}) for i in range(3)))
    first = Worker(wsettings, [hang], worker_id="first", grace_s=0.3)
    async with Reports(wsettings) as reports:
        async with _running(first):
            await asyncio.wait_for(hanging.wait(), WAIT_S)
        assert first_seen == ["q0"]
        assert first.stats.cancelled == 1
        assert set((await _committed(wsettings, first.group_of("route"))).values()) == {0}

        second = Worker(wsettings, [route], worker_id="second")
        async with _running(second):
            await reports.until(lambda seen: len(_outcomes(seen)) == 3, "all three, redelivered")

    assert second_seen == ["q0", "q1", "q2"]
    assert {o.worker_id for o in _outcomes(reports.seen)} == {"second"}


async def _committed(settings: Settings, group: str) -> dict[int, int]:
    """The committed offset of each task partition for ``group`` (0 when none)."""
    topic = settings.topic("tasks.route")
    consumer = make_consumer(settings, group_id=group)
    await consumer.start()
    try:
        return {
            p: (await consumer.committed(TopicPartition(topic, p))) or 0
            for p in range(settings.partitions)
        }
    finally:
        await consumer.stop()


def _partition_of(key: bytes, partitions: int) -> int:
    """The partition the producer's default partitioner gives ``key``."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(key, every, every))


# -- the command line ---------------------------------------------------------------------------


async def test_apex_worker_stops_on_sigterm_after_finishing_in_flight_tasks(
    wsettings: Settings, tmp_path: Path
) -> None:
    grace = 10.0
    await ensure_topics(wsettings, ["sample-echo", "sample-sleep"])
    env = {
        **os.environ,
        "APEX_TOPIC_PREFIX": wsettings.topic_prefix,
        "APEX_PARTITIONS": str(wsettings.partitions),
        "APEX_INSTANCE_ID": "cli-worker",
    }
    apex = shutil.which("apex", path=str(Path(sys.executable).parent)) or "apex"
    log_file = tmp_path / "worker.log"
    with log_file.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *[apex, "worker", "tests.integration.sample_agents:agents", "--grace", str(grace)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        async with Reports(wsettings) as reports:
            await _publish(wsettings, _dispatch("sample-echo", "ping", {"hello": 1}))
            await reports.until(lambda seen: len(_outcomes(seen)) == 1, "the echo (worker up)")
            await _publish(wsettings, _dispatch("sample-sleep", "nap", {"seconds": 1.0}))
            await reports.until(
                lambda seen: any(
                    isinstance(c, ReportTaskStarted) and c.step_id == "nap" for c in seen
                ),
                "the sleeping task to start",
            )
            process.send_signal(signal.SIGTERM)
            returncode = await asyncio.wait_for(process.wait(), grace + 15)
            await reports.until(lambda seen: len(_outcomes(seen)) == 2, "the in-flight outcome")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert returncode == 0, log_file.read_text()
    outcomes = {o.step_id: o for o in _outcomes(reports.seen)}
    assert isinstance(outcomes["ping"], ReportTaskSucceeded)
    assert outcomes["ping"].output == {"echo": {"hello": 1}, "worker": "cli-worker"}
    assert isinstance(outcomes["nap"], ReportTaskSucceeded)
    assert outcomes["nap"].output == {"slept": 1.0}
