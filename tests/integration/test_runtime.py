"""The runtime on the real broker: orchestrator, timers and workers together."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from apex.client import now_ms
from apex.config import Settings
from apex.domain import commands as cmd
from apex.domain import events as ev
from apex.domain.definitions import (
    ApprovalGate,
    GateWhen,
    RetryPolicy,
    StepDefinition,
    WorkflowDefinition,
    parse_ref,
)
from apex.domain.messages import RunResult
from apex.worker import FatalError, RetryableError, TaskContext, agent
from tests.integration.runtime import Runtime, assert_gapless, of_type, read_results


def chain(name: str, *steps: StepDefinition) -> WorkflowDefinition:
    return WorkflowDefinition(name=name, version=1, steps=steps)


async def test_retry_after_failure_goes_through_a_backoff_timer(apex_settings: Settings) -> None:
    calls: list[int] = []

    @agent("flaky")
    async def flaky(input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RetryableError("first try fails")
        return {"attempt": ctx.attempt}

    retry = RetryPolicy(max_attempts=3, initial_backoff_ms=300, jitter=0.5)
    wf = chain("retry", StepDefinition(id="a", capability="flaky", retry=retry))
    async with Runtime(apex_settings, [flaky]) as rt:
        await rt.client.register(wf)
        run_id = await rt.client.start_run("retry")
        history = await rt.wait_finished(run_id)
    assert isinstance(history[-1], ev.RunCompleted), history[-1]
    (retry_event,) = of_type(history, ev.StepRetryScheduled)
    timer = next(e for e in of_type(history, ev.TimerScheduled) if e.purpose == "retry")
    assert 150 <= retry_event.backoff_ms <= 300
    assert timer.fire_at_ms == retry_event.occurred_at_ms + retry_event.backoff_ms
    assert [e.timer_id for e in of_type(history, ev.TimerFired)] == [timer.timer_id]
    assert [e.attempt for e in of_type(history, ev.StepDispatched)] == [1, 2]
    assert calls == [1, 2]
    assert_gapless(history)


async def test_fatal_error_fails_the_run_without_retry(apex_settings: Settings) -> None:
    @agent("broken")
    async def broken(input: dict[str, Any]) -> dict[str, Any]:
        raise FatalError("bad ticket")

    wf = chain("fatal", StepDefinition(id="a", capability="broken", retry=RetryPolicy(3)))
    async with Runtime(apex_settings, [broken]) as rt:
        await rt.client.register(wf)
        run_id = await rt.client.start_run("fatal")
        history = await rt.wait_finished(run_id)
    assert isinstance(history[-1], ev.RunFailed)
    assert "bad ticket" in history[-1].error
    assert not of_type(history, ev.StepRetryScheduled)


async def test_step_timeout_retries_the_step(apex_settings: Settings) -> None:
    @agent("sleepy", heartbeat_s=3600)  # no heartbeat within the timeout
    async def sleepy(input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        if ctx.attempt == 1:
            await asyncio.sleep(5)
        return {"attempt": ctx.attempt}

    step = StepDefinition(
        id="a", capability="sleepy", timeout_ms=800, retry=RetryPolicy(2, initial_backoff_ms=100)
    )
    async with Runtime(apex_settings, [sleepy]) as rt:
        await rt.client.register(chain("timeout", step))
        run_id = await rt.client.start_run("timeout")
        history = await rt.wait_finished(run_id, timeout_s=60)
    assert isinstance(history[-1], ev.RunCompleted), history[-1]
    assert [e.attempt for e in of_type(history, ev.StepTimedOut)] == [1]
    assert of_type(history, ev.StepSucceeded)[0].attempt == 2


async def test_run_cancelled_mid_way_tells_the_running_step(apex_settings: Settings) -> None:
    release = asyncio.Event()

    @agent("blocking")
    async def blocking(input: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {}

    wf = chain(
        "cancel",
        StepDefinition(id="a", capability="blocking"),
        StepDefinition(id="b", capability="blocking", depends_on=("a",)),
    )
    async with Runtime(apex_settings, [blocking]) as rt:
        await rt.client.register(wf)
        run_id = await rt.client.start_run("cancel")
        await rt.wait_for(run_id, lambda h: bool(of_type(h, ev.StepStarted)))
        await rt.client.cancel(run_id, reason="customer withdrew")
        history = await rt.wait_finished(run_id)
        release.set()
        await asyncio.sleep(1.0)  # the late success report must change nothing
        after = await rt.history(run_id)
    assert isinstance(history[-1], ev.RunCancelled)
    cancelled = {e.step_id: e.was_running for e in of_type(history, ev.StepCancelled)}
    assert cancelled == {"a": True, "b": False}
    assert after == history
    results = [r for r in await read_results(apex_settings) if r.run_id == run_id]
    assert [(type(r), r.status) for r in results] == [(RunResult, "cancelled")]


async def test_duplicated_worker_result_is_ignored(apex_settings: Settings) -> None:
    wf = chain(
        "dup",
        StepDefinition(id="a", capability="manual"),
        StepDefinition(
            id="b",
            capability="manual",
            depends_on=("a",),
            inputs={"x": parse_ref("$.steps.a.output.x")},
        ),
    )
    async with Runtime(apex_settings) as rt:  # no worker: the test reports by hand
        await rt.client.register(wf)
        run_id = await rt.client.start_run("dup")
        await rt.wait_for(run_id, lambda h: bool(of_type(h, ev.StepDispatched)))
        report = cmd.ReportTaskSucceeded(
            command_id=str(uuid.uuid4()),
            run_id=run_id,
            issued_at_ms=now_ms(),
            step_id="a",
            attempt=1,
            output={"x": 1},
        )
        await rt.client.send(report)
        await rt.client.send(report)  # the same record again (redelivery)
        await rt.client.send(
            cmd.ReportTaskSucceeded(  # a second report, new command id
                command_id=str(uuid.uuid4()),
                run_id=run_id,
                issued_at_ms=now_ms(),
                step_id="a",
                attempt=1,
                output={"x": 2},
            )
        )
        history = await rt.wait_for(run_id, lambda h: len(of_type(h, ev.StepDispatched)) == 2)
        await asyncio.sleep(1.0)
        history = await rt.history(run_id)
    assert [e.output for e in of_type(history, ev.StepSucceeded)] == [{"x": 1}]
    assert of_type(history, ev.StepDispatched)[1].input == {"x": 1}
    assert not of_type(history, ev.CommandRejected)
    assert_gapless(history)


async def test_approval_granted_and_rejected(apex_settings: Settings) -> None:
    @agent("act")
    async def act(input: dict[str, Any]) -> dict[str, Any]:
        return {"done": True}

    gated = StepDefinition(id="act", capability="act", approval=ApprovalGate(GateWhen.BEFORE))
    async with Runtime(apex_settings, [act]) as rt:
        await rt.client.register(chain("gate", gated))
        yes = await rt.client.start_run("gate")
        no = await rt.client.start_run("gate")
        for run_id in (yes, no):
            await rt.wait_for(run_id, lambda h: bool(of_type(h, ev.ApprovalRequested)))
            assert not of_type(await rt.history(run_id), ev.StepDispatched)
        await rt.client.approve(yes, "act", approver="ann", comment="ok")
        await rt.client.reject(no, "act", approver="bob", reason="too risky")
        granted = await rt.wait_finished(yes)
        rejected = await rt.wait_finished(no)
    assert isinstance(granted[-1], ev.RunCompleted)
    assert of_type(granted, ev.ApprovalGranted)[0].approver == "ann"
    assert isinstance(rejected[-1], ev.RunFailed)
    assert "too risky" in rejected[-1].error
    assert not of_type(rejected, ev.StepDispatched)


async def test_undecodable_command_goes_to_dlq_and_processing_goes_on(
    apex_settings: Settings,
) -> None:
    from tests.integration.runtime import wait_dlq

    @agent("ok")
    async def ok(input: dict[str, Any]) -> dict[str, Any]:
        return {}

    async with Runtime(apex_settings, [ok]) as rt:
        await rt.client.register(chain("dlq", StepDefinition(id="a", capability="ok")))
        await rt.client._send(apex_settings.topic("commands"), "run-x", b"\xc3\x01garbage")
        run_id = await rt.client.start_run("dlq")
        history = await rt.wait_finished(run_id)
        # The bad record sits on another partition than the run: wait for its letter.
        letters = await wait_dlq(apex_settings)
    assert isinstance(history[-1], ev.RunCompleted)
    (letter,) = letters
    headers = dict(letter.headers)
    assert letter.value == b"\xc3\x01garbage"
    assert headers["apex.dlq.stage"] == b"orchestrator"
    assert b"CodecError" in headers["apex.dlq.error_type"]
    assert headers["apex.dlq.topic"] == apex_settings.topic("commands").encode()


async def test_signal_delivered_by_a_trigger_rule_wakes_the_waiting_step(
    apex_settings: Settings, topic_factory: Any
) -> None:
    import json
    from dataclasses import replace

    from apex.domain.definitions import SignalWait
    from apex.kafka.clients import make_producer
    from apex.triggers import parse_rules
    from streams.triggers import TriggerService

    @agent("ship")
    async def ship(input: dict[str, Any]) -> dict[str, Any]:
        return {"shipped": input["order"], "paid_with": input["signal"]["method"]}

    upstream = await topic_factory("shop.orders")
    wf = chain(
        "order",
        StepDefinition(
            id="ship",
            capability="ship",
            inputs={"order": parse_ref("$.input.order_id")},
            wait_for_signal=SignalWait("payment", correlation=parse_ref("$.input.order_id")),
        ),
    )
    rules = parse_rules(
        {
            "rules": [
                {
                    "name": "placed",
                    "topic": upstream,
                    "when": {"field": "$.type", "equals": "placed"},
                    "start_run": {
                        "definition": "order",
                        "input": {"order_id": "$.order"},
                        "idempotency_key": "$.order",
                    },
                },
                {
                    "name": "paid",
                    "topic": upstream,
                    "when": {"field": "$.type", "equals": "paid"},
                    "send_signal": {
                        "definition": "order",
                        "correlation": "$.order",
                        "signal": "payment",
                        "payload": "$.payment",
                    },
                },
            ]
        }
    )
    settings = replace(apex_settings, triggers_start="earliest")
    triggers = TriggerService(settings, rules)
    async with Runtime(settings, [ship]) as rt:
        await rt.client.register(wf)
        trigger_task = asyncio.create_task(triggers.run())
        producer = make_producer(settings)
        await producer.start()
        try:
            placed = {"type": "placed", "order": "O-17"}
            await producer.send_and_wait(upstream, json.dumps(placed).encode(), key=b"O-17")
            from apex.client import run_id_for

            run_id = run_id_for("order", "O-17")
            await rt.wait_for(run_id, lambda h: bool(of_type(h, ev.SignalAwaited)))
            paid = {"type": "paid", "order": "O-17", "payment": {"method": "card"}}
            await producer.send_and_wait(upstream, json.dumps(paid).encode(), key=b"O-17")
            history = await rt.wait_finished(run_id)
        finally:
            await producer.stop()
            triggers.stop()
            await asyncio.wait_for(trigger_task, 30)
    assert isinstance(history[-1], ev.RunCompleted), history[-1]
    (received,) = of_type(history, ev.SignalReceived)
    assert (received.step_id, received.correlation_key) == ("ship", "O-17")
    assert history[-1].outputs == {"ship": {"shipped": "O-17", "paid_with": "card"}}


async def test_timers_are_rebuilt_from_the_log_after_a_restart(apex_settings: Settings) -> None:
    from streams.timers import TimerService

    @agent("flaky")
    async def flaky(input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        if ctx.attempt == 1:
            raise RetryableError("first try fails")
        return {}

    retry = RetryPolicy(max_attempts=2, initial_backoff_ms=2_000)
    wf = chain("restart", StepDefinition(id="a", capability="flaky", retry=retry))
    async with Runtime(apex_settings, [flaky], timers=False) as rt:
        await rt.client.register(wf)
        first = TimerService(apex_settings)
        first_task = asyncio.create_task(first.run())
        run_id = await rt.client.start_run("restart")
        history = await rt.wait_for(
            run_id, lambda h: any(e.purpose == "retry" for e in of_type(h, ev.TimerScheduled))
        )
        first.stop()  # before the 2 s backoff is due: only the log knows the timer now
        await asyncio.wait_for(first_task, 30)
        assert not of_type(await rt.history(run_id), ev.TimerFired)
        second = TimerService(apex_settings)
        second_task = asyncio.create_task(second.run())
        try:
            history = await rt.wait_finished(run_id)
        finally:
            second.stop()
            await asyncio.wait_for(second_task, 30)
    assert isinstance(history[-1], ev.RunCompleted), history[-1]
    timer = next(e for e in of_type(history, ev.TimerScheduled) if e.purpose == "retry")
    (fired,) = of_type(history, ev.TimerFired)
    assert fired.timer_id == timer.timer_id
    assert fired.occurred_at_ms >= timer.fire_at_ms
    assert [e.attempt for e in of_type(history, ev.StepDispatched)] == [1, 2]
