"""Each partition of ``apex.commands`` is decided at its own pace, and what waits is bounded.

A partition's transaction is held open at its commit (its producer's
``commit_transaction`` waits on a gate): the other partitions must go on, and
the held partition's commands must queue up to a bound, pause its fetching,
and all be decided exactly once when the gate opens.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

from aiokafka import TopicPartition

from apex.client import ApexClient
from apex.config import Settings
from apex.domain import events as ev
from apex.kafka.clients import partition_for
from streams.orchestrator import BACKLOG_BATCHES, Orchestrator
from tests.integration.runtime import assert_gapless, of_type, read_events, until
from tests.integration.test_failover import CHAIN


def _run_ids_on(settings: Settings, partition: int, count: int) -> list[str]:
    found: list[str] = []
    while len(found) < count:
        run_id = str(uuid.uuid4())
        if partition_for(run_id.encode(), settings.partitions) == partition:
            found.append(run_id)
    return found


class _Gate:
    """Holds a partition's transactions at their commit until opened."""

    def __init__(self, orchestrator: Orchestrator, tp: TopicPartition) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()
        producer = orchestrator._parts[tp].producer
        commit = producer.commit_transaction

        async def gated() -> None:
            self.entered.set()
            await self.opened.wait()
            await commit()

        producer.commit_transaction = gated


async def _started(settings: Settings) -> tuple[Orchestrator, asyncio.Task[None]]:
    orchestrator = Orchestrator(settings)
    task = asyncio.create_task(orchestrator.run())

    async def owns_every_partition() -> bool:
        assert not task.done(), task
        return len(orchestrator._parts) == settings.partitions

    await until(owns_every_partition, "the orchestrator owns every partition")
    return orchestrator, task


async def _dispatched(settings: Settings, run_ids: list[str]) -> dict[str, list[ev.Event]]:
    histories = await read_events(settings)
    return {r: histories[r] for r in run_ids if len(histories.get(r, ())) >= 2}


async def test_a_slow_transaction_on_one_partition_holds_up_no_other(
    apex_settings: Settings,
) -> None:
    commands = apex_settings.topic("commands")
    orchestrator, task = await _started(apex_settings)
    try:
        gate = _Gate(orchestrator, TopicPartition(commands, 0))
        (stuck,) = _run_ids_on(apex_settings, 0, 1)
        (moving,) = _run_ids_on(apex_settings, 1, 1)
        async with ApexClient(apex_settings) as client:
            await client.register(CHAIN)
            await client.start_run("chain5", {}, run_id=stuck)
            await asyncio.wait_for(gate.entered.wait(), timeout=30)
            await client.start_run("chain5", {}, run_id=moving)

            async def moved() -> bool:
                assert not task.done(), task
                return moving in await _dispatched(apex_settings, [moving])

            await until(moved, "a run on partition 1 decided while partition 0's commit waits")
            assert stuck not in await read_events(apex_settings)
            gate.opened.set()

            async def caught_up() -> bool:
                return stuck in await _dispatched(apex_settings, [stuck])

            await until(caught_up, "partition 0's run decided once its commit went through")
    finally:
        orchestrator.stop()
        await asyncio.wait_for(task, timeout=30)


async def test_a_held_partition_queues_a_bounded_backlog_and_loses_none_of_it(
    apex_settings: Settings,
) -> None:
    settings = replace(apex_settings, orchestrator_batch=2)
    bound = BACKLOG_BATCHES * settings.orchestrator_batch
    tp = TopicPartition(settings.topic("commands"), 0)
    orchestrator, task = await _started(settings)
    try:
        gate = _Gate(orchestrator, tp)
        first, *queued = run_ids = _run_ids_on(settings, 0, 4 * bound)
        async with ApexClient(settings) as client:
            await client.register(CHAIN)
            await client.start_run("chain5", {}, run_id=first)
            await asyncio.wait_for(gate.entered.wait(), timeout=30)
            for run_id in queued:
                await client.start_run("chain5", {}, run_id=run_id)

        consumer = orchestrator._consumer
        assert consumer is not None

        async def paused() -> bool:
            assert not task.done(), task
            return tp in consumer.paused()

        await until(paused, "partition 0's fetching paused at the backlog bound")
        await asyncio.sleep(0.5)  # were fetching not paused, more would queue meanwhile
        part = orchestrator._parts[tp]
        assert bound <= len(part.pending) < bound + settings.orchestrator_batch, len(part.pending)
        gate.opened.set()

        async def all_dispatched() -> bool:
            assert not task.done(), task
            return len(await _dispatched(settings, run_ids)) == len(run_ids)

        await until(all_dispatched, "every queued run decided after the commit went through")
        assert tp not in consumer.paused()
        histories = await read_events(settings)
        for run_id in run_ids:
            assert_gapless(histories[run_id])
            assert len(of_type(histories[run_id], ev.RunStarted)) == 1, run_id
    finally:
        orchestrator.stop()
        await asyncio.wait_for(task, timeout=30)
