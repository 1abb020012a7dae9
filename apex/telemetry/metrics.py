"""Apex's metrics: the instruments, and the sources of its observable gauges.

Instruments are OTel metrics; :func:`apex.telemetry.setup` installs a meter
whose reader serves them in Prometheus text format (``APEX_METRICS_PORT``).
Until then :func:`get` returns instruments of a no-op meter, and callers skip
them altogether behind ``if flags.METRICS:``.

Names in Prometheus (the exporter appends the unit and ``_total``), labels in brackets:

- ``apex_orchestrator_commands_total`` [command_type]: commands decided
- ``apex_orchestrator_events_total`` [event_type]: events appended
- ``apex_orchestrator_decision_duration_seconds``: decide + evolve of one command
- ``apex_orchestrator_transaction_duration_seconds``: one batch's Kafka transaction
- ``apex_orchestrator_active_runs`` [partition]: runs not finished (gauge)
- ``apex_steps_retries_total``, ``apex_steps_timeouts_total``: from the events
- ``apex_dlq_records_total`` [stage]: records set aside on ``apex.dlq``
- ``apex_worker_tasks_total`` [capability, outcome]: attempts a worker ran
- ``apex_worker_schedule_to_start_seconds`` [capability]: dispatch → attempt starts
- ``apex_worker_step_duration_seconds`` [capability, outcome]: the agent's run
- ``apex_timers_fired_total``; ``apex_triggers_commands_total`` [rule]
- ``apex_consumer_lag`` [group, topic, partition]: records not read yet (gauge)
- ``apex_projection_events_total`` [projection]: events applied
- ``apex_projection_lag_seconds`` [projection]: event appended → applied
- ``apex_projection_lag_events`` [projection, topic, partition]: not applied yet (gauge)

Gauge sources are plain registries read at scrape time, on the exporter's
thread: they copy what they read (``list(d.items())`` runs without releasing
the GIL) and never touch the event loop.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.metrics import (
    CallbackOptions,
    Counter,
    Histogram,
    Meter,
    NoOpMeterProvider,
    Observation,
)

LATENCY_BUCKETS_S = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Decision and transaction latency: 10 µs to 10 s."""

STEP_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
"""Step latencies and durations: 1 ms to an hour."""


@dataclass(frozen=True)
class Instruments:
    commands: Counter
    events: Counter
    decision_duration: Histogram
    transaction_duration: Histogram
    retries: Counter
    timeouts: Counter
    dlq: Counter
    worker_tasks: Counter
    schedule_to_start: Histogram
    step_duration: Histogram
    timers_fired: Counter
    trigger_commands: Counter
    projection_events: Counter
    projection_lag: Histogram


def _make(meter: Meter) -> Instruments:
    instruments = Instruments(
        commands=meter.create_counter(
            "apex.orchestrator.commands", "{command}", "Commands the orchestrator decided."
        ),
        events=meter.create_counter(
            "apex.orchestrator.events", "{event}", "Events the orchestrator appended."
        ),
        decision_duration=meter.create_histogram(
            "apex.orchestrator.decision.duration",
            "s",
            "Time to decide one command and fold its events (decide + evolve).",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        ),
        transaction_duration=meter.create_histogram(
            "apex.orchestrator.transaction.duration",
            "s",
            "One batch: decisions, sends and the Kafka transaction's commit.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        ),
        retries=meter.create_counter(
            "apex.steps.retries", "{retry}", "Step attempts scheduled again after a failure."
        ),
        timeouts=meter.create_counter(
            "apex.steps.timeouts", "{timeout}", "Step attempts that timed out."
        ),
        dlq=meter.create_counter(
            "apex.dlq.records", "{record}", "Records set aside on apex.dlq, by stage."
        ),
        worker_tasks=meter.create_counter(
            "apex.worker.tasks", "{task}", "Task attempts a worker ran, by capability and outcome."
        ),
        schedule_to_start=meter.create_histogram(
            "apex.worker.schedule_to_start",
            "s",
            "From the orchestrator's dispatch to the worker starting the attempt.",
            explicit_bucket_boundaries_advisory=STEP_BUCKETS_S,
        ),
        step_duration=meter.create_histogram(
            "apex.worker.step.duration",
            "s",
            "How long the agent ran one attempt.",
            explicit_bucket_boundaries_advisory=STEP_BUCKETS_S,
        ),
        timers_fired=meter.create_counter(
            "apex.timers.fired", "{timer}", "FireTimer commands sent by the timer service."
        ),
        trigger_commands=meter.create_counter(
            "apex.triggers.commands", "{command}", "Commands trigger rules made from events."
        ),
        projection_events=meter.create_counter(
            "apex.projection.events", "{event}", "Events the projector applied."
        ),
        projection_lag=meter.create_histogram(
            "apex.projection.lag",
            "s",
            "From an event's append to its projection's commit.",
            explicit_bucket_boundaries_advisory=STEP_BUCKETS_S,
        ),
    )
    meter.create_observable_gauge(
        "apex.orchestrator.active_runs", [_observe_active_runs], "{run}", "Runs not finished."
    )
    meter.create_observable_gauge(
        "apex.consumer.lag",
        [_observe_consumer_lag],
        "{record}",
        "Records a consumer has not read yet: highwater (or last stable offset) - position.",
    )
    meter.create_observable_gauge(
        "apex.projection.lag.events",
        [_observe_projection_backlog],
        "{event}",
        "Events of apex.events a projection has not applied yet.",
    )
    return instruments


def get() -> Instruments:
    """The instruments in force (no-ops until metrics are set up)."""
    return _current


def _install(meter: Meter | None) -> None:
    global _current
    _current = _make(meter or NoOpMeterProvider().get_meter("apex"))


# -- active runs ------------------------------------------------------------------------------


GaugeSource = Callable[[], Iterable[tuple[int, dict[str, Any]]]]
_active_runs: dict[int, GaugeSource] = {}


def observe_active_runs(owner: object, source: GaugeSource) -> None:
    """Register ``owner``'s ``source``: it returns ``(count, attributes)`` pairs when scraped.

    It runs on the exporter's thread: it must only read, and copy what it reads.
    """
    _active_runs[id(owner)] = source


def forget_active_runs(owner: object) -> None:
    _active_runs.pop(id(owner), None)


def _observe_active_runs(_options: CallbackOptions) -> Iterator[Observation]:
    for source in list(_active_runs.values()):
        try:
            observed = list(source())
        except RuntimeError:  # changed under us (a rebalance): next scrape
            continue
        for count, attributes in observed:
            yield Observation(count, attributes)


# -- consumer lag -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Watched:
    consumer: weakref.ReferenceType[Any]
    group: str


_consumers: dict[int, _Watched] = {}


def watch_consumer(consumer: Any, group: str | None) -> None:
    """Report ``consumer``'s lag per assigned partition (aiokafka ``AIOKafkaConsumer``)."""
    _consumers[id(consumer)] = _Watched(weakref.ref(consumer), group or "")


def unwatch_consumer(consumer: Any) -> None:
    _consumers.pop(id(consumer), None)


def consumer_lag(consumer: Any) -> dict[tuple[str, int], int]:
    """Records behind per (topic, partition), from what the consumer last fetched.

    The end is :func:`log_end`; the position is the next offset the consumer
    will return. Partitions not fetched yet are left out.
    """
    lag: dict[tuple[str, int], int] = {}
    assignment = _assignment(consumer)
    if assignment is None:
        return lag
    for tp in list(assignment.tps):
        state = assignment.state_value(tp)
        if state is None or not state.has_valid_position:
            continue
        end = _end(state)
        if end is not None:
            lag[(tp.topic, tp.partition)] = max(0, end - state.position)
    return lag


def log_end(consumer: Any, tp: Any) -> int | None:
    """Where ``consumer`` (aiokafka) last saw ``tp``'s log end, ``None`` if not fetched yet.

    The last stable offset when the broker gave one (a ``read_committed``
    consumer never reads past it), else the highwater.
    """
    assignment = _assignment(consumer)
    state = assignment.state_value(tp) if assignment is not None else None
    return _end(state) if state is not None else None


def _assignment(consumer: Any) -> Any:
    subscription = getattr(consumer, "_subscription", None)
    return getattr(getattr(subscription, "subscription", None), "assignment", None)


def _end(state: Any) -> int | None:
    end = state.lso if state.lso is not None and state.lso >= 0 else state.highwater
    return end if end is not None and end >= 0 else None


def _observe_consumer_lag(_options: CallbackOptions) -> Iterator[Observation]:
    for watched in list(_consumers.values()):
        consumer = watched.consumer()
        if consumer is None:
            continue
        try:
            lag = consumer_lag(consumer)
        except (RuntimeError, AssertionError, AttributeError):  # reassigned under us
            continue
        for (topic, partition), behind in lag.items():
            yield Observation(
                behind, {"group": watched.group, "topic": topic, "partition": str(partition)}
            )


# -- projection lag -----------------------------------------------------------------------------

_projection_backlog: dict[tuple[str, str, int], int] = {}


def set_projection_backlog(projection: str, topic: str, partition: int, events: int) -> None:
    """How many events of ``topic[partition]`` ``projection`` has still to apply."""
    _projection_backlog[(projection, topic, partition)] = events


def clear_projection_backlog(projection: str, topic: str, partition: int) -> None:
    """The partition moved to another projector: stop reporting it here."""
    _projection_backlog.pop((projection, topic, partition), None)


def _observe_projection_backlog(_options: CallbackOptions) -> Iterator[Observation]:
    for (projection, topic, partition), events in list(_projection_backlog.items()):
        yield Observation(
            events, {"projection": projection, "topic": topic, "partition": str(partition)}
        )


def record_projection_batch(
    projection: str, appended_at_ms: Iterable[int], committed_at_ms: int
) -> None:
    """A projection committed a batch: count its events and each one's lag.

    ``appended_at_ms`` are the Kafka timestamps of the batch's records
    (``record.timestamp``, log-append or create time); ``committed_at_ms`` is
    when the batch's PostgreSQL transaction committed.
    """
    instruments = _current
    attributes = {"projection": projection}
    count = 0
    for appended in appended_at_ms:
        instruments.projection_lag.record(max(0, committed_at_ms - appended) / 1000, attributes)
        count += 1
    if count:
        instruments.projection_events.add(count, attributes)


_current: Instruments = _make(NoOpMeterProvider().get_meter("apex"))
