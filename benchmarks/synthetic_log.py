"""Synthetic ``apex.events`` logs for the rebuild and audit benchmarks.

Runs are played through the real decider (``decide`` + ``evolve``) with a
scripted worker, once per *scenario* (all steps succeed; a retry after a
failure; a fatal failure; an approval granted; an approval rejected). Each
scenario's events are then cloned per run — new run id, shifted times — and
encoded with the codec, with the ``apex.chain`` header computed as the
orchestrator does. Runs of a partition are interleaved (``concurrency`` at a
time), as a busy orchestrator writes them, so one run's events are spread over
the partition.

:func:`ensure_log` writes such a log to a topic with a fast idempotent
(non-transactional) producer, each partition's runs to that partition; a topic
that already holds at least the requested number of events is reused as it is
(``bench_audit.py`` and ``bench_rebuild.py`` call it).
"""

from __future__ import annotations

import dataclasses
import random
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

from apex import codec
from apex.chain import CHAIN_HEADER, GENESIS, link
from apex.domain import commands as cmd
from apex.domain import events as ev
from apex.domain.decider import decide
from apex.domain.definitions import (
    ApprovalGate,
    GateWhen,
    RetryPolicy,
    StepDefinition,
    WorkflowDefinition,
)
from apex.domain.state import RunState, StepStatus, evolve

__all__ = ["SCENARIOS", "Scenario", "play", "records_for_partition", "scenario_events"]

Scenario = str
SCENARIOS: tuple[Scenario, ...] = ("ok", "ok", "ok", "retry", "fail", "approved", "rejected")
"""Weighted: most runs just succeed."""

_T0 = 1_700_000_000_000


def definition(scenario: Scenario) -> WorkflowDefinition:
    steps = [
        StepDefinition(id="fetch", capability="fetch", timeout_ms=30_000),
        StepDefinition(
            id="classify",
            capability="classify",
            depends_on=("fetch",),
            retry=RetryPolicy(max_attempts=3, initial_backoff_ms=500),
        ),
        StepDefinition(id="summarize", capability="llm", depends_on=("fetch",)),
        StepDefinition(
            id="act",
            capability="act",
            depends_on=("classify", "summarize"),
            approval=ApprovalGate(GateWhen.BEFORE, deadline_ms=3_600_000)
            if scenario in ("approved", "rejected")
            else None,
        ),
        StepDefinition(id="notify", capability="notify", depends_on=("act",)),
    ]
    return WorkflowDefinition(name=f"synthetic-{scenario}", version=1, steps=tuple(steps))


def play(scenario: Scenario, run_id: str = "template", seed: int = 7) -> list[ev.Event]:
    """One run of ``scenario`` through the decider; returns its events."""
    wf = definition(scenario)
    now = _T0
    n = 0

    def next_id() -> str:
        nonlocal n
        n += 1
        return f"{run_id}-c{n}"

    state: RunState | None = None
    history: list[ev.Event] = []

    def send(command: cmd.Command) -> None:
        nonlocal state
        for event in decide(state, command):
            state = evolve(state, event)
            history.append(event)

    send(
        cmd.StartRun(
            command_id=next_id(),
            run_id=run_id,
            issued_at_ms=now,
            definition_name=wf.name,
            input={"ticket": 42, "text": "printer on fire"},
            jitter_seed=seed,
            definition=wf,
        )
    )
    for _ in range(100):
        assert state is not None
        if state.status.finished:
            break
        now += 37
        for sid, st in sorted(state.steps.items()):
            if st.status is StepStatus.DISPATCHED:
                send(
                    cmd.ReportTaskStarted(
                        command_id=next_id(),
                        run_id=run_id,
                        issued_at_ms=now,
                        step_id=sid,
                        attempt=st.attempt,
                        worker_id="w-1",
                    )
                )
                now += 11
                if scenario == "retry" and sid == "classify" and st.attempt == 1:
                    send(
                        cmd.ReportTaskFailed(
                            command_id=next_id(),
                            run_id=run_id,
                            issued_at_ms=now,
                            step_id=sid,
                            attempt=1,
                            error="rate limited",
                            retryable=True,
                        )
                    )
                elif scenario == "fail" and sid == "summarize":
                    send(
                        cmd.ReportTaskFailed(
                            command_id=next_id(),
                            run_id=run_id,
                            issued_at_ms=now,
                            step_id=sid,
                            attempt=st.attempt,
                            error="model refused",
                            retryable=False,
                        )
                    )
                else:
                    send(
                        cmd.ReportTaskSucceeded(
                            command_id=next_id(),
                            run_id=run_id,
                            issued_at_ms=now,
                            step_id=sid,
                            attempt=st.attempt,
                            output={"step": sid, "score": 0.87, "tags": ["a"]},
                        )
                    )
            elif st.status is StepStatus.AWAITING_APPROVAL:
                if scenario == "approved":
                    send(
                        cmd.ApproveStep(
                            command_id=next_id(),
                            run_id=run_id,
                            issued_at_ms=now,
                            step_id=sid,
                            approver="ann",
                            comment="ok",
                        )
                    )
                else:
                    send(
                        cmd.RejectStep(
                            command_id=next_id(),
                            run_id=run_id,
                            issued_at_ms=now,
                            step_id=sid,
                            approver="bob",
                            reason="too risky",
                        )
                    )
            elif st.status is StepStatus.RETRY_WAIT:
                timer = next(
                    t for t in state.timers.values() if t.step_id == sid and t.purpose == "retry"
                )
                now = max(now, timer.fire_at_ms)
                send(
                    cmd.FireTimer(
                        command_id=next_id(),
                        run_id=run_id,
                        issued_at_ms=now,
                        timer_id=timer.timer_id,
                    )
                )
    return history


_TEMPLATES: dict[Scenario, list[ev.Event]] = {}


def scenario_events(scenario: Scenario) -> list[ev.Event]:
    if scenario not in _TEMPLATES:
        _TEMPLATES[scenario] = play(scenario)
    return _TEMPLATES[scenario]


def clone(template: list[ev.Event], run_id: str, shift_ms: int) -> list[ev.Event]:
    return [
        dataclasses.replace(
            e, run_id=run_id, correlation_id=run_id, occurred_at_ms=e.occurred_at_ms + shift_ms
        )
        for e in template
    ]


def partition_of(run_id: str, partitions: int) -> int:
    """Any stable spread: synthetic records are produced to an explicit partition."""
    return zlib.crc32(run_id.encode()) % partitions


def records_for_partition(
    events: int, *, concurrency: int = 200, seed: int = 1, prefix: str = "run"
) -> Iterator[tuple[bytes, bytes, list[tuple[str, bytes]], str]]:
    """About ``events`` encoded records (key, value, headers, run id) of interleaved runs."""
    rng = random.Random(seed)
    active: list[tuple[str, list[ev.Event], int, bytes]] = []  # run, events, next index, chain
    produced = 0
    started = 0
    while produced < events or active:
        while len(active) < concurrency and produced + _pending(active) < events:
            scenario = rng.choice(SCENARIOS)
            run_id = f"{prefix}-{uuid.UUID(int=rng.getrandbits(128))}"
            active.append(
                (run_id, clone(scenario_events(scenario), run_id, started * 50), 0, GENESIS)
            )
            started += 1
        if not active:
            return
        i = rng.randrange(len(active))
        run_id, run_events, at, chain = active[i]
        value = codec.encode_event(run_events[at])
        chain = link(chain, value)
        yield run_id.encode(), value, [(CHAIN_HEADER, chain)], run_id
        produced += 1
        if at + 1 == len(run_events):
            active[i] = active[-1]
            active.pop()
        else:
            active[i] = (run_id, run_events, at + 1, chain)


def _pending(active: list[tuple[str, list[ev.Event], int, Any]]) -> int:
    return sum(len(events) - at for _, events, at, _ in active)


# -- writing a synthetic log to Kafka -------------------------------------------------------------


async def ensure_log(
    settings: Any,
    topic: str,
    events: int,
    *,
    partitions: int = 6,
    concurrency: int = 200,
    on_progress: Any = None,
) -> tuple[int, bool]:
    """A topic holding at least ``events`` synthetic events; returns (events there, reused).

    An existing topic with enough committed records is reused as it is (the
    1M-event log takes a while to write); one with fewer is deleted and written
    again.
    """
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from apex.kafka.clients import make_producer
    from apex.kafka.event_log import EventLogReader

    async with EventLogReader(settings) as reader:
        ends = await reader.end_offsets(topic)
    if ends and sum(ends.values()) >= events:
        return sum(ends.values()), True
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        if ends:
            await admin.delete_topics([topic])
            await asyncio.sleep(2.0)
        await admin.create_topics(
            [
                NewTopic(
                    topic,
                    partitions,
                    settings.replication_factor,
                    topic_configs={"retention.ms": "-1"},
                )
            ]
        )
    finally:
        await admin.close()
    producer = make_producer(
        settings, linger_ms=20, max_batch_size=1024 * 1024, compression_type=None
    )
    await producer.start()
    written = 0
    try:
        per_partition = -(-events // partitions)
        generators = [
            records_for_partition(per_partition, concurrency=concurrency, seed=p, prefix=f"p{p}")
            for p in range(partitions)
        ]
        pending: list[Any] = []
        live = list(range(partitions))
        while live:
            for p in list(live):
                for _ in range(500):
                    item = next(generators[p], None)
                    if item is None:
                        live.remove(p)
                        break
                    key, value, headers, _run = item
                    pending.append(
                        await producer.send(topic, value, key=key, headers=headers, partition=p)
                    )
                    written += 1
            if len(pending) > 20_000:
                await asyncio.gather(*pending)
                pending.clear()
                if on_progress is not None:
                    on_progress(written, events)
        await asyncio.gather(*pending)
        if on_progress is not None:
            on_progress(written, events)
    finally:
        await producer.stop()
    return written, False
