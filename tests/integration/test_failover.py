"""Exactly-once under failure: kill -9, failover between orchestrators, zombies.

The orchestrators here are real processes (``python -m apex orchestrator``);
the checks read the log: per run, ``seq`` is exactly 1..n, no step attempt is
dispatched twice, and exactly one result is published.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from apex.client import ApexClient
from apex.config import Settings
from apex.domain import events as ev
from apex.domain.definitions import StepDefinition, WorkflowDefinition
from apex.domain.messages import RunResult
from apex.kafka.clients import make_consumer, make_producer, partition_for, topic_partitions
from streams.orchestrator import Orchestrator, TransactionFailed
from tests.integration.runtime import (
    assert_gapless,
    of_type,
    read_dlq,
    read_events,
    read_results,
    spawn,
    stop,
    until,
)

RUNS = 60

CHAIN = WorkflowDefinition(
    name="chain5",
    version=1,
    steps=tuple(
        StepDefinition(id=f"s{i}", capability="noop", depends_on=(f"s{i - 1}",) if i else ())
        for i in range(5)
    ),
)


async def _event_count(settings: Settings) -> int:
    return sum(len(h) for h in (await read_events(settings)).values())


async def _wait_events(settings: Settings, at_least: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while await _event_count(settings) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} events after {timeout_s}s"
        await asyncio.sleep(0.2)


async def _check_exactly_once(settings: Settings, run_ids: list[str]) -> None:
    histories = await read_events(settings)
    for run_id in run_ids:
        history = histories[run_id]
        assert_gapless(history)
        dispatched = Counter((e.step_id, e.attempt) for e in of_type(history, ev.StepDispatched))
        assert all(n == 1 for n in dispatched.values()), f"{run_id}: {dispatched}"
        assert isinstance(history[-1], ev.RunCompleted), f"{run_id}: {history[-1]}"
    results = Counter(r.run_id for r in await read_results(settings) if isinstance(r, RunResult))
    assert {r: results[r] for r in run_ids} == dict.fromkeys(run_ids, 1)


async def _submit(settings: Settings) -> list[str]:
    async with ApexClient(settings) as client:
        await client.register(CHAIN)
        return [await client.start_run("chain5", {"n": n}) for n in range(RUNS)]


async def test_kill_9_mid_batch_then_restart_loses_and_duplicates_nothing(
    apex_settings: Settings, tmp_path: Path
) -> None:
    worker = spawn(
        apex_settings,
        "worker",
        "tests.integration.failover_agents:agents",
        name="worker",
        log_dir=tmp_path,
    )
    first = spawn(apex_settings, "orchestrator", name="orch-1", log_dir=tmp_path)
    second = None
    try:
        run_ids = await _submit(apex_settings)
        await _wait_events(apex_settings, at_least=RUNS * 3)
        first.send_signal(signal.SIGKILL)  # mid-batch: no chance to commit or abort
        first.wait(10)
        assert await _event_count(apex_settings) < RUNS * 16, "killed too late to test anything"
        second = spawn(apex_settings, "orchestrator", name="orch-2", log_dir=tmp_path)
        async with ApexClient(apex_settings) as client:
            await client.wait(run_ids, timeout_s=120)
        await _check_exactly_once(apex_settings, run_ids)
    finally:
        for proc in (worker, first, second):
            if proc is not None:
                stop(proc)


async def test_two_orchestrators_one_killed_the_other_finishes_all_runs(
    apex_settings: Settings, tmp_path: Path
) -> None:
    worker = spawn(
        apex_settings,
        "worker",
        "tests.integration.failover_agents:agents",
        name="worker",
        log_dir=tmp_path,
    )
    orchs = [
        spawn(apex_settings, "orchestrator", name=f"orch-{n}", log_dir=tmp_path) for n in (1, 2)
    ]
    try:
        await asyncio.sleep(3)  # both join the group and split the partitions
        run_ids = await _submit(apex_settings)
        await _wait_events(apex_settings, at_least=RUNS * 2)
        orchs[0].send_signal(signal.SIGKILL)
        orchs[0].wait(10)
        async with ApexClient(apex_settings) as client:
            await client.wait(run_ids, timeout_s=120)
        assert orchs[1].poll() is None, "the surviving orchestrator died"
        await _check_exactly_once(apex_settings, run_ids)
    finally:
        for proc in (worker, *orchs):
            stop(proc)


async def test_zombie_orchestrator_is_fenced_and_cannot_append(apex_settings: Settings) -> None:
    orchestrator = Orchestrator(apex_settings)
    task = asyncio.create_task(orchestrator.run())
    async with ApexClient(apex_settings) as client:
        await client.register(CHAIN)
        warm = await client.start_run("chain5")
        deadline = time.monotonic() + 30
        while warm not in await read_events(apex_settings):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.2)
        # A new owner of every partition appears (as after a rebalance the zombie missed).
        usurpers = [
            make_producer(apex_settings, transactional_id=f"{orchestrator.group}-{p}")
            for p in range(apex_settings.partitions)
        ]
        for producer in usurpers:
            await producer.start()
        try:
            late = await client.start_run("chain5")
            with pytest.raises(TransactionFailed):
                await asyncio.wait_for(task, timeout=30)
        finally:
            for producer in usurpers:
                await producer.stop()
    assert late not in await read_events(apex_settings), "a fenced zombie appended events"


async def _group_offsets(settings: Settings, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}


async def _end_offsets(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(
            await topic_partitions(consumer, topic)
        )
        return ends
    finally:
        await consumer.stop()


async def test_a_new_owner_resumes_where_the_events_recorded_without_the_group_offset(
    apex_settings: Settings,
) -> None:
    """The consumed offset rides in the events: a resume needs no group offset.

    The first orchestrator never commits offsets to the group outside its
    transactions, so only the dead-letter-only transaction leaves one there. The
    second must start every partition after the commands already decided: it
    decides only the one new command, and the dead letter is not written again.
    """
    commands = apex_settings.topic("commands")
    group = f"{apex_settings.topic_prefix}orchestrator"
    first = Orchestrator(apex_settings, commit_hints=False)
    task = asyncio.create_task(first.run())
    async with ApexClient(apex_settings) as client:
        await client.register(CHAIN)
        run_ids = [await client.start_run("chain5", {"n": n}) for n in range(12)]

        async def all_dispatched() -> bool:
            assert not task.done(), task
            histories = await read_events(apex_settings)
            return all(len(histories.get(r, ())) >= 2 for r in run_ids)

        await until(all_dispatched, "every run started and its first step dispatched")
        await client._send(commands, "not-a-run", b"\xc3\x01garbage")

        async def dead_lettered() -> bool:
            return len(await read_dlq(apex_settings)) == 1

        await until(dead_lettered, "the undecodable command dead-lettered")
        first.stop()
        await asyncio.wait_for(task, timeout=30)

        ends = await _end_offsets(apex_settings, commands)
        committed = await _group_offsets(apex_settings, group)
        dead_letter_partition = partition_for(b"not-a-run", apex_settings.partitions)
        assert set(committed) == {TopicPartition(commands, dead_letter_partition)}, committed
        busy = {tp for tp, end in ends.items() if end > 0} - set(committed)
        assert busy, "no partition relies on the recorded offset alone"
        before = await read_events(apex_settings)

        second = Orchestrator(apex_settings, commit_hints=False)
        task = asyncio.create_task(second.run())
        try:
            late = await client.start_run("chain5", {"n": "late"})

            async def late_dispatched() -> bool:
                assert not task.done(), task
                return len((await read_events(apex_settings)).get(late, ())) >= 2

            await until(late_dispatched, "the late run started by the second orchestrator")
            await asyncio.sleep(1)  # a replay from the start would go on deciding meanwhile
            assert second.stats.commands == 1, (
                f"the second orchestrator decided {second.stats.commands} commands: "
                "it replayed commands the first had already decided"
            )
        finally:
            second.stop()
            await asyncio.wait_for(task, timeout=30)
    assert len(await read_dlq(apex_settings)) == 1, "the dead letter was written twice"
    histories = await read_events(apex_settings)
    assert {r: histories[r] for r in run_ids} == {r: before[r] for r in run_ids}


async def test_the_group_offsets_follow_the_transactions_as_hints(
    apex_settings: Settings,
) -> None:
    """Outside the transactions, the group's offsets still reach the end (lag monitoring)."""
    commands = apex_settings.topic("commands")
    group = f"{apex_settings.topic_prefix}orchestrator"
    orchestrator = Orchestrator(apex_settings)
    task = asyncio.create_task(orchestrator.run())
    try:
        async with ApexClient(apex_settings) as client:
            await client.register(CHAIN)
            for n in range(12):
                await client.start_run("chain5", {"n": n})

        async def caught_up() -> bool:
            assert not task.done(), task
            ends = await _end_offsets(apex_settings, commands)
            committed = await _group_offsets(apex_settings, group)
            return all(committed.get(tp, 0) == end for tp, end in ends.items())

        await until(caught_up, "the group's committed offsets at the end of apex.commands")
    finally:
        orchestrator.stop()
        await asyncio.wait_for(task, timeout=30)
