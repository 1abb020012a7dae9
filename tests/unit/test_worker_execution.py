"""One task attempt without Kafka: reports, heartbeats, timeouts, cancellation.

A fake reporter stands in for the producer; it encodes every command with the
real codec (so reports are valid Avro) and acknowledges at once, or fails the
heartbeats on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from typing import Any, cast

import pytest

from apex import codec
from apex.domain.commands import (
    Command,
    ReportTaskFailed,
    ReportTaskHeartbeat,
    ReportTaskStarted,
    ReportTaskSucceeded,
)
from apex.domain.messages import TaskDispatch
from apex.worker import FatalError, TaskContext, agent
from apex.worker.execution import Reporter, TaskRun

WAIT_S = 5.0


class FakeReporter:
    worker_id = "worker-1"

    def __init__(self, *, heartbeats_fail: bool = False) -> None:
        self.sent: list[Command] = []
        self.headers: list[list[tuple[str, bytes]]] = []
        self.heartbeats_fail = heartbeats_fail
        self.heartbeat_seen = asyncio.Event()

    async def send(self, command: Command, headers: list[tuple[str, bytes]]) -> asyncio.Future[Any]:
        codec.encode_command(command)  # raises CodecError like the real one
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if isinstance(command, ReportTaskHeartbeat) and self.heartbeats_fail:
            future.set_exception(ConnectionError("broker unreachable"))
        else:
            self.sent.append(command)
            self.headers.append(headers)
            future.set_result(None)
        if isinstance(command, ReportTaskHeartbeat) and len(self.heartbeats()) >= 2:
            self.heartbeat_seen.set()
        return future

    def heartbeats(self) -> list[Command]:
        return [c for c in self.sent if isinstance(c, ReportTaskHeartbeat)]


def _run(
    fn: Any,
    reporter: FakeReporter,
    *,
    timeout_ms: int | None = None,
    heartbeat_s: float | None = None,
    grace_s: float = 0.05,
    input: Any = None,
    non_retryable: tuple[type[BaseException], ...] = (ValueError, TypeError),
    started_after_s: float = 0.0,
    dispatched_at_ms: int = 1_000,
) -> TaskRun:
    dispatch = TaskDispatch(
        run_id="run-7",
        step_id="classify",
        attempt=2,
        capability=fn.capability,
        input=input if input is not None else {"text": "hello"},
        timeout_ms=timeout_ms,
        dispatched_at_ms=dispatched_at_ms,
        definition="triage@3",
        correlation_id="ticket-42",
    )
    return TaskRun(
        fn,
        dispatch,
        cast(Reporter, reporter),
        heartbeat_s=heartbeat_s,
        grace_s=grace_s,
        started_after_s=started_after_s,
        non_retryable=non_retryable,
        headers=[("traceparent", b"00-abc-def-01"), ("other", b"x")],
    )


async def test_success_reports_started_then_succeeded_with_deterministic_ids() -> None:
    @agent("classify")
    async def classify(input: Any, ctx: TaskContext) -> Any:
        return {"label": input["text"].upper(), "attempt": ctx.attempt}

    reporter = FakeReporter()
    await asyncio.wait_for(_run(classify, reporter).run(), WAIT_S)

    started, succeeded = reporter.sent
    assert isinstance(started, ReportTaskStarted)
    assert isinstance(succeeded, ReportTaskSucceeded)
    assert succeeded.output == {"label": "HELLO", "attempt": 2}
    assert [c.command_id for c in reporter.sent] == [
        "run-7/classify/2/started",
        "run-7/classify/2/succeeded",
    ]
    assert {(c.run_id, c.correlation_id, c.worker_id) for c in (started, succeeded)} == {
        ("run-7", "ticket-42", "worker-1")
    }
    assert succeeded.issued_at_ms > 0
    assert reporter.headers[0] == [("traceparent", b"00-abc-def-01")]


async def test_a_quick_task_reports_only_its_outcome() -> None:
    @agent("classify")
    async def classify(input: Any) -> Any:
        return "done"

    reporter = FakeReporter()
    await asyncio.wait_for(_run(classify, reporter, started_after_s=0.5).run(), WAIT_S)

    assert [type(c) for c in reporter.sent] == [ReportTaskSucceeded]


async def test_a_task_still_running_after_the_delay_reports_started_first() -> None:
    @agent("classify")
    async def classify(input: Any) -> Any:
        await asyncio.sleep(0.2)
        return "done"

    reporter = FakeReporter()
    await asyncio.wait_for(_run(classify, reporter, started_after_s=0.02).run(), WAIT_S)

    assert [type(c) for c in reporter.sent] == [ReportTaskStarted, ReportTaskSucceeded]


async def test_the_start_report_comes_sooner_when_the_deadline_is_near() -> None:
    """Half the time left before the orchestrator's deadline (from the dispatch) caps
    the delay, so a long delay setting cannot let a short step time out unseen."""
    import time

    sent_while_running: list[Command] = []

    @agent("classify")
    async def classify(input: Any) -> Any:
        await asyncio.sleep(0.3)
        sent_while_running.extend(reporter.sent)
        return "done"

    reporter = FakeReporter()
    now_ms = int(time.time() * 1000)
    run = _run(classify, reporter, timeout_ms=400, started_after_s=60.0, dispatched_at_ms=now_ms)
    await asyncio.wait_for(run.run(), WAIT_S)

    assert [type(c) for c in sent_while_running] == [ReportTaskStarted]  # not after 60 s
    assert [type(c) for c in reporter.sent] == [ReportTaskStarted, ReportTaskSucceeded]


async def test_fatal_error_is_reported_as_not_retryable_with_type_and_message() -> None:
    @agent("classify")
    async def classify(input: Any) -> Any:
        raise FatalError("ticket has no body")

    reporter = FakeReporter()
    await asyncio.wait_for(_run(classify, reporter).run(), WAIT_S)

    failed = reporter.sent[-1]
    assert isinstance(failed, ReportTaskFailed)
    assert (failed.error, failed.retryable) == ("FatalError: ticket has no body", False)
    assert failed.command_id == "run-7/classify/2/failed"


async def test_configured_non_retryable_class_is_reported_as_not_retryable() -> None:
    class Unsupported(Exception):
        pass

    @agent("classify")
    async def classify(input: Any) -> Any:
        raise Unsupported("language xx")

    reporter = FakeReporter()
    run = _run(classify, reporter, non_retryable=(Unsupported,))
    await asyncio.wait_for(run.run(), WAIT_S)
    failed = reporter.sent[-1]
    assert isinstance(failed, ReportTaskFailed)
    assert failed.retryable is False


async def test_output_that_is_not_json_fails_the_step_without_retry() -> None:
    @agent("classify")
    async def classify(input: Any) -> Any:
        return {"labels": {"a", "b"}}  # a set is not a JSON value

    reporter = FakeReporter()
    await asyncio.wait_for(_run(classify, reporter).run(), WAIT_S)

    failed = reporter.sent[-1]
    assert isinstance(failed, ReportTaskFailed)
    assert failed.retryable is False
    assert "not JSON" in failed.error


async def test_heartbeats_are_sent_while_the_agent_runs() -> None:
    reporter = FakeReporter()

    @agent("classify")
    async def classify(input: Any, ctx: TaskContext) -> Any:
        await asyncio.wait_for(reporter.heartbeat_seen.wait(), WAIT_S)
        return {"cancelled": ctx.cancelled.is_set()}

    await asyncio.wait_for(_run(classify, reporter, timeout_ms=60_000, heartbeat_s=0.01).run(), 10)

    beats = reporter.heartbeats()
    assert [b.command_id for b in beats[:2]] == [
        "run-7/classify/2/heartbeat/1",
        "run-7/classify/2/heartbeat/2",
    ]
    succeeded = reporter.sent[-1]
    assert isinstance(succeeded, ReportTaskSucceeded)
    assert succeeded.output == {"cancelled": False}


async def test_a_finished_attempt_is_freed_by_reference_counting() -> None:
    """While the agent runs, the attempt and its context refer to each other (the
    context's heartbeat is the attempt's); once the outcome is reported the context
    lets go, so the attempt is freed without the cycle collector, even when the
    agent kept its context, and a heartbeat after the outcome sends nothing."""
    kept: list[TaskContext] = []

    @agent("classify")
    async def classify(input: Any, ctx: TaskContext) -> Any:
        kept.append(ctx)
        await ctx.heartbeat()
        return "done"

    reporter = FakeReporter()
    run = _run(classify, reporter)
    gc.disable()
    try:
        await asyncio.wait_for(run.run(), WAIT_S)
        attempt = weakref.ref(run)
        del run
        assert attempt() is None
        await kept[0].heartbeat()
    finally:
        gc.enable()
    assert [type(c) for c in reporter.sent] == [
        ReportTaskStarted,
        ReportTaskHeartbeat,
        ReportTaskSucceeded,
    ]


async def test_task_past_its_timeout_without_a_delivered_heartbeat_is_cancelled() -> None:
    seen: dict[str, bool] = {}

    @agent("classify")
    async def classify(input: Any, ctx: TaskContext) -> Any:
        try:
            await asyncio.sleep(WAIT_S * 10)
        except asyncio.CancelledError:
            seen["cancelled_flag"] = ctx.cancelled.is_set()
            seen["timed_out"] = ctx.timed_out
            raise

    reporter = FakeReporter(heartbeats_fail=True)
    run = _run(classify, reporter, timeout_ms=50, heartbeat_s=0.01, grace_s=0.01)
    await asyncio.wait_for(run.run(), WAIT_S)

    assert seen == {"cancelled_flag": True, "timed_out": True}
    failed = reporter.sent[-1]
    assert isinstance(failed, ReportTaskFailed)
    assert failed.retryable is True
    assert failed.error.startswith("TimeoutError: no sign of life")


async def test_cancelled_run_sends_no_outcome_and_signals_the_agent() -> None:
    started = asyncio.Event()
    seen: dict[str, bool] = {}

    @agent("classify")
    async def classify(input: Any, ctx: TaskContext) -> Any:
        started.set()
        try:
            await asyncio.sleep(WAIT_S * 10)
        except asyncio.CancelledError:
            seen["cancelled_flag"] = ctx.cancelled.is_set()
            raise

    reporter = FakeReporter()
    run = _run(classify, reporter)
    task = asyncio.create_task(run.run())
    await asyncio.wait_for(started.wait(), WAIT_S)
    run.ctx.cancelled.set()  # as the worker's shutdown does (_Lane.cancel_all), then:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert [type(c) for c in reporter.sent] == [ReportTaskStarted]
    assert seen == {"cancelled_flag": True}


async def test_a_stop_during_the_timeout_cancellation_still_sends_no_outcome() -> None:
    """The agent runs in the attempt's own task: the deadline's cancellation of it
    must not hide a stop of the worker arriving at the same time."""

    @agent("classify")
    async def classify(input: Any, ctx: TaskContext) -> Any:
        try:
            await asyncio.sleep(WAIT_S * 10)
        except asyncio.CancelledError:
            assert ctx.timed_out
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # the worker stops meanwhile
            raise

    reporter = FakeReporter(heartbeats_fail=True)
    run = _run(classify, reporter, timeout_ms=50, heartbeat_s=0.01, grace_s=0.01)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run.run(), WAIT_S)

    assert not [c for c in reporter.sent if isinstance(c, (ReportTaskSucceeded, ReportTaskFailed))]


async def test_an_agent_that_ignores_the_stop_still_sends_no_outcome() -> None:
    started = asyncio.Event()

    @agent("classify")
    async def classify(input: Any) -> Any:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(WAIT_S * 10)
        return "finished anyway"

    reporter = FakeReporter()
    run = _run(classify, reporter, started_after_s=60.0)
    task = asyncio.create_task(run.run())
    await asyncio.wait_for(started.wait(), WAIT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert reporter.sent == []


async def test_an_agent_that_outlives_its_timeout_cancellation_reports_its_output() -> None:
    """As when the agent ran in a task of its own: what it returns is its outcome."""

    @agent("classify")
    async def classify(input: Any) -> Any:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(WAIT_S * 10)
        await asyncio.sleep(0)  # and it goes on awaiting: no cancellation left pending
        return "late"

    reporter = FakeReporter(heartbeats_fail=True)
    run = _run(classify, reporter, timeout_ms=50, heartbeat_s=0.01, grace_s=0.01)
    await asyncio.wait_for(run.run(), WAIT_S)

    succeeded = reporter.sent[-1]
    assert isinstance(succeeded, ReportTaskSucceeded)
    assert succeeded.output == "late"
    assert run.ctx.timed_out
