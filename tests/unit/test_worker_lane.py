"""A worker lane without Kafka: what each finished dispatch does to the lane's books.

The lane's consumer is built but never started; a fake reporter stands in for
the producer and acknowledges each report, or fails the outcome reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, cast

from aiokafka import TopicPartition

from apex import codec
from apex.config import Settings
from apex.domain.commands import Command, ReportTaskSucceeded
from apex.domain.messages import TaskDispatch
from apex.worker import agent
from apex.worker.execution import Reporter
from apex.worker.offsets import PartitionOffsets
from apex.worker.worker import Worker, _Lane

WAIT_S = 5.0
TP = TopicPartition("apex.tasks.classify", 0)


class FakeReporter:
    worker_id = "worker-1"

    def __init__(self, *, fail: bool = False) -> None:
        self.sent: list[Command] = []
        self.fail = fail

    async def send(self, command: Command, headers: list[tuple[str, bytes]]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(ConnectionError("broker unreachable"))
        else:
            self.sent.append(command)
            future.set_result(None)
        return future


@agent("classify")
async def classify(input: Any) -> Any:
    await asyncio.sleep(0)
    return input


def _record(offset: int) -> Any:
    dispatch = TaskDispatch(
        run_id=f"run-{offset}",
        step_id="classify",
        attempt=1,
        capability="classify",
        input={"n": offset},
        timeout_ms=None,
        dispatched_at_ms=1_000,
        definition="triage@3",
        correlation_id="ticket-42",
    )
    value = codec.encode_dispatch(dispatch)
    return SimpleNamespace(topic=TP.topic, partition=0, offset=offset, value=value, headers=[])


@asynccontextmanager
async def _lane_with(
    reporter: FakeReporter,
) -> AsyncIterator[tuple[Worker, _Lane, PartitionOffsets]]:
    worker = Worker(Settings(), [classify], worker_id="worker-1")
    lane = _Lane(worker, classify, cast(Reporter, reporter))
    offsets = PartitionOffsets()
    lane.offsets[TP] = offsets
    try:
        yield worker, lane, offsets
    finally:
        await lane.consumer.stop()


async def test_finished_tasks_free_their_slots_and_become_committable() -> None:
    reporter = FakeReporter()
    async with _lane_with(reporter) as (worker, lane, offsets):
        lane._take({TP: [_record(5), _record(6)]})
        assert len(lane.runs) == 2
        await asyncio.wait_for(asyncio.gather(*lane.runs), WAIT_S)

    assert lane.runs == {}
    assert offsets.committable() == 7
    assert [type(c) for c in reporter.sent] == [ReportTaskSucceeded, ReportTaskSucceeded]
    assert worker.stats.succeeded == 2


async def test_a_full_lane_starts_what_it_took_in_order_as_slots_free() -> None:
    reporter = FakeReporter()
    async with _lane_with(reporter) as (_, lane, offsets):
        lane.limit = 1
        lane._take({TP: [_record(5), _record(6), _record(7)]})
        assert (len(lane.runs), len(lane.backlog)) == (1, 2)
        assert offsets.committable() == 5  # what waits is received: nothing passes it
        while lane.runs:  # each finished task starts the next one waiting
            await asyncio.wait_for(asyncio.gather(*lane.runs), WAIT_S)

    assert not lane.backlog
    assert offsets.committable() == 8
    assert [c.run_id for c in reporter.sent] == ["run-5", "run-6", "run-7"]


async def test_an_undelivered_report_fails_the_worker_and_holds_the_offset_back() -> None:
    reporter = FakeReporter(fail=True)
    async with _lane_with(reporter) as (worker, lane, offsets):
        lane._take({TP: [_record(5)]})
        await asyncio.wait_for(asyncio.gather(*lane.runs), WAIT_S)

    assert lane.runs == {}  # the slot is free, but ...
    assert offsets.committable() == 5  # ... the offset is not committed past
    assert isinstance(worker._failure, ConnectionError)


async def test_a_task_cancelled_at_shutdown_is_neither_reported_nor_committed() -> None:
    reporter = FakeReporter()
    async with _lane_with(reporter) as (worker, lane, offsets):
        lane._take({TP: [_record(5)]})
        await asyncio.sleep(0)  # the task starts; its agent yields once
        tasks = lane.cancel_all()
        await asyncio.wait_for(asyncio.wait(tasks), WAIT_S)

    assert lane.runs == {}
    assert offsets.committable() == 5
    assert reporter.sent == []
    assert worker._failure is None
