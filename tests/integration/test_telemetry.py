"""One run, one trace, across processes; metrics served after a run.

The orchestrator runs in this process with the in-memory span exporter
(``APEX_OTEL_EXPORTER=memory``); the worker runs as a real ``apex worker``
process writing its spans as JSON lines (``APEX_OTEL_EXPORTER=file``). The only
thing that connects the two sets of spans is the W3C context in the Kafka
headers, so a worker span whose parent is the orchestrator's dispatch span
proves the context crossed the process boundary.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from prometheus_client.parser import text_string_to_metric_families

from apex import codec, telemetry
from apex.client import ApexClient, now_ms
from apex.config import Settings
from apex.domain import commands as cmd
from apex.domain import events as ev
from apex.domain.definitions import (
    ApprovalGate,
    GateWhen,
    RetryPolicy,
    StepDefinition,
    WorkflowDefinition,
)
from apex.kafka.clients import make_producer
from apex.telemetry import tracing
from apex.telemetry.exporters import read_spans, span_record
from apex.worker import RetryableError, TaskContext, agent
from tests.integration.runtime import Runtime, of_type, read_all, read_events, spawn, stop

Span = dict[str, Any]


@pytest.fixture
def traced(apex_settings: Settings) -> Iterator[tuple[Settings, telemetry.Telemetry]]:
    """This process traces into memory (as ``apex-orchestrator``) for the test."""
    settings = replace(apex_settings, otel_exporter="memory")
    on = telemetry.setup(settings, "apex-orchestrator")
    try:
        yield settings, on
    finally:
        telemetry.shutdown()


async def start_traced_run(settings: Settings, definition: str, input: Any) -> str:
    """StartRun sent inside a ``send apex.commands`` span: what a traced client does."""
    run_id = str(uuid.uuid4())
    command = cmd.StartRun(
        command_id=str(uuid.uuid4()),
        run_id=run_id,
        issued_at_ms=now_ms(),
        definition_name=definition,
        input=input,
        jitter_seed=7,
    )
    topic = settings.topic("commands")
    producer = make_producer(settings)
    await producer.start()
    try:
        with tracing.producer_span(
            topic,
            key=run_id,
            attributes={tracing.RUN_ID: run_id, tracing.COMMAND_TYPE: "StartRun"},
        ) as headers:
            assert headers is not None
            await producer.send_and_wait(
                topic, codec.encode_command(command), key=run_id.encode(), headers=headers
            )
    finally:
        await producer.stop()
    return run_id


def run_trace(on: telemetry.Telemetry, *files: Path) -> tuple[list[Span], list[Span]]:
    """The spans of the run's trace: this process's, and those the files hold.

    The run's trace is the one its StartRun was sent in. Outside it, only a
    client's own sends may stand (registering a definition, a command sent
    from a client with no span of its own), each the root of its own trace.
    """
    mine = [span_record(s) for s in on.finished_spans()]
    theirs = [s for f in files for s in read_spans(f)]
    start = one(mine, kind="PRODUCER", apex__command_type="StartRun")
    outside = [s for s in mine + theirs if s["trace_id"] != start["trace_id"]]
    assert all(s["kind"] == "PRODUCER" and s["parent_span_id"] is None for s in outside), outside
    return (
        [s for s in mine if s["trace_id"] == start["trace_id"]],
        [s for s in theirs if s["trace_id"] == start["trace_id"]],
    )


def one(spans: list[Span], **where: Any) -> Span:
    found = [s for s in spans if all(_field(s, k) == v for k, v in where.items())]
    assert len(found) == 1, f"{len(found)} spans match {where}: {[s['name'] for s in found]}"
    return found[0]


def _field(span: Span, key: str) -> Any:
    return span["attributes"].get(key.replace("__", ".")) if "__" in key else span.get(key)


def children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s["parent_span_id"] == parent["span_id"]]


def traceparent_of(headers: Any) -> tuple[str, str]:
    value = dict(headers)["traceparent"].decode()
    _, trace_id, span_id, _ = value.split("-")
    return trace_id, span_id


async def test_a_run_is_one_trace_across_the_orchestrator_and_a_worker_process(
    traced: tuple[Settings, telemetry.Telemetry], tmp_path: Path
) -> None:
    settings, on = traced
    worker_file = tmp_path / "worker-spans.jsonl"
    worker_settings = replace(settings, otel_exporter="file", otel_file=str(worker_file))
    flow = WorkflowDefinition(
        name="traced",
        version=1,
        steps=(
            StepDefinition(id="a", capability="telemetry-echo"),
            StepDefinition(id="b", capability="telemetry-echo", depends_on=("a",)),
        ),
    )
    worker = spawn(
        worker_settings,
        "worker",
        "tests.integration.telemetry_agents:agents",
        name="traced-worker",
        log_dir=tmp_path,
    )
    try:
        async with Runtime(settings, timers=False) as rt:
            await rt.client.register(flow)
            run_id = await start_traced_run(settings, "traced", {"n": 1})
            history = await rt.wait_finished(run_id, timeout_s=40)
    finally:
        assert stop(worker) == 0, (tmp_path / "traced-worker.log").read_text()
    assert isinstance(history[-1], ev.RunCompleted)

    mine, theirs = run_trace(on, worker_file)
    spans = mine + theirs
    commands = settings.topic("commands")
    tasks = settings.topic("tasks.telemetry-echo")

    # The client's send is the root; every span of every process is in its trace.
    client = one(spans, kind="PRODUCER", apex__command_type="StartRun")
    assert client["name"] == f"send {commands}" and client["parent_span_id"] is None
    assert {s["service"] for s in theirs} == {"apex-worker"}
    assert len(theirs) == 2  # one attempt of each step

    # client -> orchestrator: the decision on StartRun, with messaging attributes.
    start = one(mine, kind="CONSUMER", apex__command_type="StartRun")
    assert start["parent_span_id"] == client["span_id"]
    assert start["name"] == f"process {commands}" and start["kind"] == "CONSUMER"
    attributes = start["attributes"]
    assert attributes["messaging.system"] == "kafka"
    assert attributes["messaging.destination.name"] == commands
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.kafka.message.key"] == run_id
    assert isinstance(attributes["messaging.kafka.offset"], int)
    assert attributes["messaging.consumer.group.name"] == f"{settings.topic_prefix}orchestrator"
    assert attributes["apex.run_id"] == run_id and attributes["apex.events"] >= 3

    # orchestrator -> worker process -> orchestrator, step by step.
    decided_by = start
    for step in ("a", "b"):
        dispatch = one(mine, kind="PRODUCER", apex__step_id=step)
        assert dispatch["name"] == f"send {tasks}"
        assert dispatch["parent_span_id"] == decided_by["span_id"]
        execution = one(theirs, apex__step_id=step)
        assert execution["parent_span_id"] == dispatch["span_id"]  # across the process boundary
        assert execution["name"] == f"process {tasks}" and execution["kind"] == "CONSUMER"
        assert execution["attributes"]["apex.outcome"] == "succeeded"
        assert execution["attributes"]["messaging.consumer.group.name"] == (
            f"{settings.topic_prefix}workers.telemetry-echo"
        )
        assert execution["status"] == "UNSET"
        reports = {s["attributes"]["apex.command_type"]: s for s in children(mine, execution)}
        # A quick step reports its outcome alone (APEX_WORKER_STARTED_AFTER_MS).
        assert "ReportTaskSucceeded" in reports
        assert set(reports) <= {"ReportTaskStarted", "ReportTaskSucceeded"}
        decided_by = reports["ReportTaskSucceeded"]

    # Every event and the run's result carry the context of the decision that made them.
    decisions = {s["span_id"] for s in mine if s["kind"] == "CONSUMER"}
    events = [r for r in await read_all(settings, settings.topic("events")) if r.key]
    assert events and all(r.key == run_id.encode() for r in events)
    for record in events:
        trace_id, span_id = traceparent_of(record.headers)
        assert trace_id == client["trace_id"] and span_id in decisions
    (result,) = await read_all(settings, settings.topic("results"))
    assert traceparent_of(result.headers) == (client["trace_id"], decided_by["span_id"])


async def test_a_failed_attempt_its_retry_timer_and_an_approval_stay_in_the_runs_trace(
    traced: tuple[Settings, telemetry.Telemetry],
) -> None:
    settings, on = traced
    seen_by_agent: list[str] = []

    @agent("traced-flaky")
    async def flaky(input: Any, ctx: TaskContext) -> Any:
        seen_by_agent.append(f"{trace.get_current_span().get_span_context().span_id:016x}")
        if ctx.attempt == 1:
            raise RetryableError("first attempt fails")
        return {"attempt": ctx.attempt}

    @agent("traced-act")
    async def act(input: Any) -> Any:
        return {"done": True}

    flow = WorkflowDefinition(
        name="traced-retry",
        version=1,
        steps=(
            StepDefinition(
                id="a",
                capability="traced-flaky",
                retry=RetryPolicy(max_attempts=2, initial_backoff_ms=200, jitter=0.0),
            ),
            StepDefinition(
                id="b",
                capability="traced-act",
                depends_on=("a",),
                approval=ApprovalGate(GateWhen.BEFORE),
            ),
        ),
    )
    async with Runtime(settings, [flaky, act]) as rt:
        await rt.client.register(flow)
        run_id = await start_traced_run(settings, "traced-retry", {})
        await rt.wait_for(run_id, lambda h: bool(of_type(h, ev.ApprovalRequested)), 40)
        # The approval comes from a client that sends no trace context.
        await rt.client.approve(run_id, "b", approver="ann")
        history = await rt.wait_finished(run_id, timeout_s=40)
    assert isinstance(history[-1], ev.RunCompleted)
    spans, _ = run_trace(on)
    client = one(spans, kind="PRODUCER", apex__command_type="StartRun")
    assert [s for s in spans if s["parent_span_id"] is None] == [client]

    # The failed attempt: an exception event and status ERROR on the worker's span.
    tasks = settings.topic("tasks.traced-flaky")
    failed = one(spans, name=f"process {tasks}", apex__attempt=1)
    assert failed["status"] == "ERROR"
    assert failed["status_description"] == "RetryableError: first attempt fails"
    (exception,) = [e for e in failed["events"] if e["name"] == "exception"]
    assert exception["attributes"]["exception.type"] == "apex.worker.errors.RetryableError"
    assert failed["attributes"]["apex.outcome"] == "failed"
    assert failed["attributes"]["apex.retryable"] is True
    retried = one(spans, name=f"process {tasks}", apex__attempt=2)
    assert retried["status"] == "UNSET"
    # The agent runs inside its attempt's span: its own spans and logs nest there.
    assert seen_by_agent == [failed["span_id"], retried["span_id"]]

    # The failure's decision set the retry timer; the timer service fired it in the trace.
    failure = one(spans, apex__command_type="ReportTaskFailed")
    assert failure["parent_span_id"] == failed["span_id"]
    fire = one(spans, kind="PRODUCER", apex__command_type="FireTimer")
    assert fire["parent_span_id"] == failure["span_id"]
    fired = one(spans, kind="CONSUMER", apex__command_type="FireTimer")
    assert fired["parent_span_id"] == fire["span_id"]
    assert (
        one(spans, kind="PRODUCER", apex__step_id="a", apex__attempt=2)["parent_span_id"]
        == (fired["span_id"])
    )

    # A command from outside the run's trace (sent without context, or in a trace
    # of its own, linked) joins the run's trace under its first decision.
    start = one(spans, kind="CONSUMER", apex__command_type="StartRun")
    approval = one(spans, kind="CONSUMER", apex__command_type="ApproveStep")
    assert approval["parent_span_id"] == start["span_id"]
    for link in approval["links"]:
        assert link["trace_id"] != client["trace_id"]  # the approving client's own trace


# -- metrics --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(port: int) -> Samples:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    samples: Samples = {}
    for family in text_string_to_metric_families(await asyncio.to_thread(get)):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    assert name in samples, f"{name} not served; served: {sorted(samples)}"
    return sum(v for got, v in samples[name] if labels.items() <= got.items())


async def history_until(
    settings: Settings, run_id: str, done: Callable[[list[ev.Event]], bool], timeout_s: float = 40
) -> None:
    """Poll the run's events (the processes run elsewhere) until ``done`` holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    history: list[ev.Event] = []
    while loop.time() < end:
        history = (await read_events(settings)).get(run_id, [])
        if done(history):
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"run {run_id}: not there in {timeout_s}s: {history}")


async def until_served(port: int, deadline_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        try:
            await scrape(port)
            return
        except OSError:
            if loop.time() > end:
                raise
            await asyncio.sleep(0.2)


async def test_metrics_endpoints_serve_the_runs_metrics(
    apex_settings: Settings, tmp_path: Path
) -> None:
    ports = {"orchestrator": free_port(), "timers": free_port(), "worker": free_port()}
    processes = {
        name: spawn(
            replace(apex_settings, metrics_port=port, worker_grace_s=1.0),
            *(
                ["worker", "tests.integration.telemetry_agents:agents"]
                if name == "worker"
                else [name]
            ),
            name=f"metrics-{name}",
            log_dir=tmp_path,
        )
        for name, port in ports.items()
    }
    flow = WorkflowDefinition(
        name="measured",
        version=1,
        steps=(
            StepDefinition(
                id="a", capability="telemetry-flaky", retry=RetryPolicy(2, initial_backoff_ms=100)
            ),
            StepDefinition(
                id="b",
                capability="telemetry-sleepy",
                inputs={"sleep_s": 2.0},
                depends_on=("a",),
                timeout_ms=800,
                retry=RetryPolicy(2, initial_backoff_ms=100),
            ),
        ),
    )
    try:
        for port in ports.values():
            await until_served(port)
        async with ApexClient(apex_settings) as client:
            await client.register(flow)
            run_id = await client.start_run("measured")
            producer = make_producer(apex_settings)
            await producer.start()
            try:  # bad input: the orchestrator's DLQ counter
                await producer.send_and_wait(
                    apex_settings.topic("commands"), b"\xc3\x01garbage", key=b"run-x"
                )
            finally:
                await producer.stop()
            await history_until(
                apex_settings, run_id, lambda h: any(getattr(e, "step_id", "") == "b" for e in h)
            )
            running = await scrape(ports["orchestrator"])
            await history_until(
                apex_settings, run_id, lambda h: any(isinstance(e, ev.RunCompleted) for e in h)
            )
        await asyncio.sleep(0.5)  # the worker measures once its last report is acknowledged
        orchestrator = await scrape(ports["orchestrator"])
        timers = await scrape(ports["timers"])
        worker = await scrape(ports["worker"])
    finally:
        codes = {name: stop(process) for name, process in processes.items()}
    logs = {name: (tmp_path / f"metrics-{name}.log").read_text() for name in processes}
    assert codes == dict.fromkeys(processes, 0), logs

    assert value(running, "apex_orchestrator_active_runs") >= 1
    o = orchestrator
    assert value(o, "apex_orchestrator_commands_total", command_type="StartRun") == 1
    assert value(o, "apex_orchestrator_commands_total", command_type="ReportTaskSucceeded") >= 2
    assert value(o, "apex_orchestrator_events_total", event_type="RunCompleted") == 1
    assert value(o, "apex_orchestrator_decision_duration_seconds_count") > 0
    assert value(o, "apex_orchestrator_decision_duration_seconds_sum") > 0
    assert value(o, "apex_orchestrator_transaction_duration_seconds_count") > 0
    assert value(o, "apex_steps_retries_total") >= 2  # a after its failure, b after its timeout
    assert value(o, "apex_steps_timeouts_total") >= 1
    assert value(o, "apex_dlq_records_total", stage="orchestrator") == 1
    group = f"{apex_settings.topic_prefix}orchestrator"
    commands = apex_settings.topic("commands")
    assert value(o, "apex_consumer_lag", group=group, topic=commands) >= 0
    assert {labels["partition"] for labels, _ in o["apex_consumer_lag"]} == {"0", "1", "2"}

    assert value(timers, "apex_timers_fired_total") >= 2  # a's backoff, b's timeout

    w = worker
    flaky = {"capability": "telemetry-flaky"}
    assert value(w, "apex_worker_tasks_total", **flaky, outcome="failed") == 1
    assert value(w, "apex_worker_tasks_total", **flaky, outcome="succeeded") == 1
    assert value(w, "apex_worker_schedule_to_start_seconds_count", **flaky) == 2
    assert value(w, "apex_worker_step_duration_seconds_count", **flaky) == 2
    assert value(w, "apex_worker_step_duration_seconds_count", capability="telemetry-sleepy") >= 1
    sleepy_group = f"{apex_settings.topic_prefix}workers.telemetry-sleepy"
    assert value(w, "apex_consumer_lag", group=sleepy_group) >= 0
    assert "process_resident_memory_bytes" in w


async def test_a_new_orchestrator_rebuilds_each_runs_trace_root_from_the_log(
    traced: tuple[Settings, telemetry.Telemetry],
) -> None:
    settings, on = traced

    @agent("traced-after")
    async def after(input: Any) -> Any:
        return {}

    flow = WorkflowDefinition(
        name="traced-failover",
        version=1,
        steps=(
            StepDefinition(
                id="a", capability="traced-after", approval=ApprovalGate(GateWhen.BEFORE)
            ),
        ),
    )
    async with Runtime(settings, timers=False) as first:
        await first.client.register(flow)
        run_id = await start_traced_run(settings, "traced-failover", {})
        await first.wait_for(run_id, lambda h: bool(of_type(h, ev.ApprovalRequested)), 40)
    # A second orchestrator owns the partitions now; it knows the run from the log only.
    async with Runtime(settings, [after], timers=False) as second:
        await second.client.approve(run_id, "a", approver="ann")
        history = await second.wait_finished(run_id, timeout_s=40)
    assert isinstance(history[-1], ev.RunCompleted)
    spans, _ = run_trace(on)
    start = one(spans, kind="CONSUMER", apex__command_type="StartRun")
    approval = one(spans, kind="CONSUMER", apex__command_type="ApproveStep")
    assert approval["parent_span_id"] == start["span_id"]


async def test_a_triggered_run_continues_the_upstream_publishers_trace(
    traced: tuple[Settings, telemetry.Telemetry], topic_factory: Any
) -> None:
    from apex.triggers import parse_rules
    from streams.triggers import TriggerService

    settings, on = traced
    settings = replace(settings, triggers_start="earliest")
    orders = await topic_factory("shop.orders")
    rules = parse_rules(
        {
            "rules": [
                {
                    "name": "order-placed",
                    "topic": orders,
                    "start_run": {
                        "definition": "traced-trigger",
                        "input": {"order": "$.id"},
                        "idempotency_key": "$.id",
                    },
                }
            ]
        }
    )

    @agent("traced-fulfil")
    async def fulfil(input: Any) -> Any:
        return {"fulfilled": True}

    flow = WorkflowDefinition(
        name="traced-trigger",
        version=1,
        steps=(StepDefinition(id="fulfil", capability="traced-fulfil"),),
    )
    service = TriggerService(settings, rules)
    async with Runtime(settings, [fulfil], timers=False) as rt:
        await rt.client.register(flow)
        triggers = asyncio.create_task(service.run())
        try:
            producer = make_producer(settings)
            await producer.start()
            try:  # the upstream system publishes inside a span of its own
                with tracing.producer_span(orders, key="O-1") as headers:
                    await producer.send_and_wait(
                        orders, b'{"id": "O-1"}', key=b"O-1", headers=headers
                    )
            finally:
                await producer.stop()
            for _ in range(150):
                runs = await read_events(settings)
                if runs:
                    break
                await asyncio.sleep(0.2)
            (run_id,) = runs
            await rt.wait_finished(run_id, timeout_s=40)
        finally:
            service.stop()
            await asyncio.wait_for(triggers, 30)
    spans = [span_record(s) for s in on.finished_spans()]
    upstream = one(spans, name=f"send {orders}")
    assert upstream["parent_span_id"] is None
    trace_spans = [s for s in spans if s["trace_id"] == upstream["trace_id"]]
    rule = one(trace_spans, name=f"process {orders}")
    assert rule["parent_span_id"] == upstream["span_id"]
    assert rule["attributes"]["messaging.consumer.group.name"] == service.group
    start = one(trace_spans, kind="CONSUMER", apex__command_type="StartRun")
    assert start["parent_span_id"] == rule["span_id"]
    executed = one(trace_spans, apex__step_id="fulfil", kind="CONSUMER")
    assert executed["attributes"]["apex.outcome"] == "succeeded"
    finished = one(trace_spans, kind="CONSUMER", apex__command_type="ReportTaskSucceeded")
    assert finished["parent_span_id"] == executed["span_id"]
