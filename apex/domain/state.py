"""A run's state, and ``evolve``: the state after one more event.

``evolve`` is the only way a state changes; folding a run's events through it
reproduces the state the decider reasoned about (invariant 3). It refuses an
event whose ``seq`` is not the next one, so a gap or a duplicate in a log can
never fold silently into a wrong state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from apex.domain import events as ev
from apex.domain.definitions import JSON, GateWhen, StepDefinition, WorkflowDefinition
from apex.domain.graph import topological_order


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self is not RunStatus.RUNNING


class StepStatus(StrEnum):
    PENDING = "pending"
    """Waiting for its dependencies."""
    SCHEDULED = "scheduled"
    AWAITING_SIGNAL = "awaiting_signal"
    AWAITING_APPROVAL = "awaiting_approval"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED_STEP

    @property
    def active(self) -> bool:
        """A worker may be executing it."""
        return self in (StepStatus.DISPATCHED, StepStatus.RUNNING)


_FINISHED_STEP = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.FAILED, StepStatus.CANCELLED}
)


@dataclass(frozen=True, slots=True)
class StepState:
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    """The current attempt; 0 before the first dispatch."""
    input: JSON = None
    output: JSON = None
    error: str | None = None
    worker_id: str = ""
    last_activity_ms: int | None = None
    """Dispatch time or last heartbeat of the current attempt: timeouts count from it."""
    approval_granted: bool = False
    gate: GateWhen | None = None
    """The gate asked last, while ``AWAITING_APPROVAL``."""
    signal_payload: JSON = None
    started_at_ms: int | None = None
    finished_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class PendingTimer:
    timer_id: str
    fire_at_ms: int
    purpose: str
    step_id: str | None
    attempt: int | None


@dataclass(frozen=True, slots=True)
class BufferedSignal:
    name: str
    payload: JSON
    correlation_key: str | None


@dataclass(frozen=True, slots=True)
class RunState:
    run_id: str
    definition: WorkflowDefinition
    input: JSON
    idempotency_key: str
    jitter_seed: int
    correlation_id: str
    start_command_id: str
    started_at_ms: int
    seq: int
    status: RunStatus
    steps: Mapping[str, StepState]
    timers: Mapping[str, PendingTimer]
    order: tuple[str, ...]
    """Step ids in topological order (derived from the definition)."""
    step_defs: Mapping[str, StepDefinition]
    """The definition's steps by id (derived from it, once per run)."""
    signals: tuple[BufferedSignal, ...] = ()
    signal_command_ids: frozenset[str] = frozenset()
    """Causation ids of every ``SignalReceived``: a ``SendSignal`` delivered again is
    recognised by its command id (a signal carries no other identity)."""
    outputs: JSON = None
    error: str | None = None
    finished_at_ms: int | None = None

    def step(self, step_id: str) -> StepState:
        return self.steps[step_id]


class FoldError(ValueError):
    """An event cannot follow the state it is applied to (gap, duplicate, wrong run)."""


def fold(events: Iterable[ev.Event], state: RunState | None = None) -> RunState | None:
    """The state after every event, from ``state`` (default: no run yet)."""
    for event in events:
        state = evolve(state, event)
    return state


def evolve(state: RunState | None, event: ev.Event) -> RunState | None:
    """The state after ``event``. Pure; raises :class:`FoldError` on a seq gap."""
    if state is None:
        if isinstance(event, ev.RunStarted):
            if event.seq != 1:
                raise FoldError(f"run {event.run_id}: RunStarted has seq {event.seq}, not 1")
            return _started(event)
        if isinstance(event, ev.CommandRejected) and event.seq == 0:
            return None
        raise FoldError(
            f"run {event.run_id}: {type(event).__name__} (seq {event.seq}) before RunStarted"
        )
    if event.run_id != state.run_id:
        raise FoldError(f"event of run {event.run_id} applied to run {state.run_id}")
    if event.seq == 0 and isinstance(event, ev.CommandRejected):
        return state
    if event.seq != state.seq + 1:
        raise FoldError(
            f"run {state.run_id}: event seq {event.seq} does not follow {state.seq} "
            f"({type(event).__name__})"
        )
    apply = _APPLY.get(type(event))
    if apply is None:
        raise FoldError(f"no evolve rule for {type(event).__name__}")
    return apply(state, event)


# -- one rule per event type ---------------------------------------------------------
#
# Each rule builds the next state, ``seq`` included, in one construction.
# ``dataclasses.replace`` re-reads every field's metadata on each call and is
# about three times slower than a direct constructor call, so the rules that run
# for every step of every run use the two helpers below; the rare ones (a run
# finishing, signals) keep ``replace`` for clarity.


def _next(
    s: RunState,
    seq: int,
    steps: Mapping[str, StepState] | None = None,
    timers: Mapping[str, PendingTimer] | None = None,
) -> RunState:
    """``replace(s, seq=seq, steps=steps, timers=timers)``; ``None`` keeps the field."""
    return RunState(
        s.run_id,
        s.definition,
        s.input,
        s.idempotency_key,
        s.jitter_seed,
        s.correlation_id,
        s.start_command_id,
        s.started_at_ms,
        seq,
        s.status,
        s.steps if steps is None else steps,
        s.timers if timers is None else timers,
        s.order,
        s.step_defs,
        s.signals,
        s.signal_command_ids,
        s.outputs,
        s.error,
        s.finished_at_ms,
    )


def _step_changed(old: StepState, **changes: Any) -> StepState:
    """``replace(old, **changes)`` for the hot path (see above)."""
    assert changes.keys() <= _STEP_FIELDS, f"StepState has no {changes.keys() - _STEP_FIELDS}"
    get = changes.get
    return StepState(
        get("status", old.status),
        get("attempt", old.attempt),
        get("input", old.input),
        get("output", old.output),
        get("error", old.error),
        get("worker_id", old.worker_id),
        get("last_activity_ms", old.last_activity_ms),
        get("approval_granted", old.approval_granted),
        get("gate", old.gate),
        get("signal_payload", old.signal_payload),
        get("started_at_ms", old.started_at_ms),
        get("finished_at_ms", old.finished_at_ms),
    )


# The helpers above list the fields by position: fail at import, not with a
# silently shifted state, if the dataclasses change.
_RUN_FIELDS = (
    "run_id", "definition", "input", "idempotency_key", "jitter_seed", "correlation_id",
    "start_command_id", "started_at_ms", "seq", "status", "steps", "timers", "order", "step_defs",
    "signals", "signal_command_ids", "outputs", "error", "finished_at_ms",
)  # fmt: skip
_STEP_FIELD_ORDER = (
    "status", "attempt", "input", "output", "error", "worker_id", "last_activity_ms",
    "approval_granted", "gate", "signal_payload", "started_at_ms", "finished_at_ms",
)  # fmt: skip
_STEP_FIELDS = frozenset(_STEP_FIELD_ORDER)
if (
    tuple(f.name for f in fields(RunState)) != _RUN_FIELDS
    or tuple(f.name for f in fields(StepState)) != _STEP_FIELD_ORDER
):
    raise ImportError("RunState/StepState fields changed: update _next and _step_changed")


def _started(e: ev.RunStarted) -> RunState:
    return RunState(
        run_id=e.run_id,
        definition=e.definition,
        input=e.input,
        idempotency_key=e.idempotency_key,
        jitter_seed=e.jitter_seed,
        correlation_id=e.correlation_id,
        start_command_id=e.causation_id,
        started_at_ms=e.occurred_at_ms,
        seq=1,
        status=RunStatus.RUNNING,
        steps={s.id: StepState() for s in e.definition.steps},
        timers={},
        order=topological_order(e.definition),
        step_defs={s.id: s for s in e.definition.steps},
    )


def _with_step(
    s: RunState,
    e: ev.Event,
    step_id: str,
    step: StepState,
    drop_timers: frozenset[str] | None = None,
) -> RunState:
    """The state at ``e`` with ``step_id`` replaced, and maybe its timers for ``drop_timers``."""
    steps = dict(s.steps)
    steps[step_id] = step
    timers = None if drop_timers is None else _without_timers(s.timers, step_id, drop_timers)
    return _next(s, e.seq, steps, timers)


def _without_timers(
    timers: Mapping[str, PendingTimer], step_id: str, purposes: frozenset[str]
) -> Mapping[str, PendingTimer]:
    if not timers:
        return timers
    kept = {k: t for k, t in timers.items() if not (t.step_id == step_id and t.purpose in purposes)}
    return timers if len(kept) == len(timers) else kept


_ATTEMPT_TIMERS = frozenset({"step_timeout"})
_RETRY_TIMERS = frozenset({"retry"})
_APPROVAL_TIMERS = frozenset({"approval_deadline"})
_SIGNAL_TIMERS = frozenset({"signal_deadline"})
_ALL_STEP_TIMERS = frozenset({"step_timeout", "retry", "approval_deadline", "signal_deadline"})


def _finish_run(s: RunState, e: ev.Event, status: RunStatus, **changes: Any) -> RunState:
    return replace(
        s, seq=e.seq, status=status, timers={}, finished_at_ms=e.occurred_at_ms, **changes
    )


def _run_completed(s: RunState, e: ev.RunCompleted) -> RunState:
    return _finish_run(s, e, RunStatus.COMPLETED, outputs=e.outputs)


def _run_failed(s: RunState, e: ev.RunFailed) -> RunState:
    return _finish_run(s, e, RunStatus.FAILED, error=e.error)


def _run_cancelled(s: RunState, e: ev.RunCancelled) -> RunState:
    return _finish_run(s, e, RunStatus.CANCELLED, error=e.reason)


# The four rules every step of every run goes through build StepState by
# position (a quarter cheaper than ``_step_changed``); the order is checked above.


def _step_scheduled(s: RunState, e: ev.StepScheduled) -> RunState:
    o = s.steps[e.step_id]
    step = StepState(
        StepStatus.SCHEDULED, o.attempt, o.input, o.output, o.error, o.worker_id,
        o.last_activity_ms, o.approval_granted, o.gate, o.signal_payload, o.started_at_ms,
        o.finished_at_ms,
    )  # fmt: skip
    return _with_step(s, e, e.step_id, step)


def _step_skipped(s: RunState, e: ev.StepSkipped) -> RunState:
    step = _step_changed(
        s.steps[e.step_id], status=StepStatus.SKIPPED, finished_at_ms=e.occurred_at_ms
    )
    return _with_step(s, e, e.step_id, step)


def _step_dispatched(s: RunState, e: ev.StepDispatched) -> RunState:
    o = s.steps[e.step_id]
    started_at = o.started_at_ms if o.started_at_ms is not None else e.occurred_at_ms
    step = StepState(
        StepStatus.DISPATCHED, e.attempt, e.input, o.output, o.error, o.worker_id,
        e.occurred_at_ms, o.approval_granted, o.gate, o.signal_payload, started_at,
        o.finished_at_ms,
    )  # fmt: skip
    return _with_step(s, e, e.step_id, step, _RETRY_TIMERS)


def _step_started(s: RunState, e: ev.StepStarted) -> RunState:
    o = s.steps[e.step_id]
    # A 'started' delivered after a heartbeat is not a later sign of life: the
    # timeout never counts from further back than it already does.
    last = o.last_activity_ms
    if last is None or e.occurred_at_ms > last:
        last = e.occurred_at_ms
    step = StepState(
        StepStatus.RUNNING, o.attempt, o.input, o.output, o.error, e.worker_id,
        last, o.approval_granted, o.gate, o.signal_payload, o.started_at_ms,
        o.finished_at_ms,
    )  # fmt: skip
    return _with_step(s, e, e.step_id, step)


def _step_heartbeat(s: RunState, e: ev.StepHeartbeat) -> RunState:
    step = _step_changed(s.steps[e.step_id], last_activity_ms=e.occurred_at_ms)
    return _with_step(s, e, e.step_id, step)


def _step_succeeded(s: RunState, e: ev.StepSucceeded) -> RunState:
    o = s.steps[e.step_id]
    step = StepState(
        StepStatus.SUCCEEDED, o.attempt, o.input, e.output, None, o.worker_id,
        o.last_activity_ms, o.approval_granted, o.gate, o.signal_payload, o.started_at_ms,
        e.occurred_at_ms,
    )  # fmt: skip
    return _with_step(s, e, e.step_id, step, _ATTEMPT_TIMERS)


def _step_retry_scheduled(s: RunState, e: ev.StepRetryScheduled) -> RunState:
    step = _step_changed(
        s.steps[e.step_id], status=StepStatus.RETRY_WAIT, attempt=e.next_attempt, error=e.error
    )
    return _with_step(s, e, e.step_id, step, _ATTEMPT_TIMERS)


def _step_failed(s: RunState, e: ev.StepFailed) -> RunState:
    step = _step_changed(
        s.steps[e.step_id],
        status=StepStatus.FAILED,
        error=e.error,
        finished_at_ms=e.occurred_at_ms,
    )
    return _with_step(s, e, e.step_id, step, _ALL_STEP_TIMERS)


def _step_timed_out(s: RunState, e: ev.StepTimedOut) -> RunState:
    return _next(s, e.seq, timers=_without_timers(s.timers, e.step_id, _ATTEMPT_TIMERS))


def _step_cancelled(s: RunState, e: ev.StepCancelled) -> RunState:
    step = _step_changed(
        s.steps[e.step_id],
        status=StepStatus.CANCELLED,
        error=e.reason,
        finished_at_ms=e.occurred_at_ms,
    )
    return _with_step(s, e, e.step_id, step, _ALL_STEP_TIMERS)


def _approval_requested(s: RunState, e: ev.ApprovalRequested) -> RunState:
    step = _step_changed(s.steps[e.step_id], status=StepStatus.AWAITING_APPROVAL, gate=e.when)
    return _with_step(s, e, e.step_id, step)


def _approval_granted(s: RunState, e: ev.ApprovalGranted) -> RunState:
    old = s.steps[e.step_id]
    # A gate after the step held its output until now; a gate before it
    # releases the step for dispatch, which the decider emits next.
    status = StepStatus.SUCCEEDED if old.gate is GateWhen.AFTER else StepStatus.SCHEDULED
    step = _step_changed(old, status=status, approval_granted=True, gate=None)
    return _with_step(s, e, e.step_id, step, _APPROVAL_TIMERS)


def _approval_rejected(s: RunState, e: ev.ApprovalRejected) -> RunState:
    return _next(s, e.seq, timers=_without_timers(s.timers, e.step_id, _APPROVAL_TIMERS))


def _signal_awaited(s: RunState, e: ev.SignalAwaited) -> RunState:
    step = _step_changed(s.steps[e.step_id], status=StepStatus.AWAITING_SIGNAL)
    return _with_step(s, e, e.step_id, step)


def _signal_received(s: RunState, e: ev.SignalReceived) -> RunState:
    seen = s.signal_command_ids | {e.causation_id}
    if e.step_id is None:
        buffered = BufferedSignal(e.name, e.payload, e.correlation_key)
        return replace(s, seq=e.seq, signals=(*s.signals, buffered), signal_command_ids=seen)
    # Releasing a step consumes the first matching buffered signal, if it came early.
    signals = list(s.signals)
    for i, sig in enumerate(signals):
        if sig.name == e.name and sig.correlation_key == e.correlation_key:
            del signals[i]
            break
    steps = dict(s.steps)
    steps[e.step_id] = _step_changed(
        s.steps[e.step_id], status=StepStatus.SCHEDULED, signal_payload=e.payload
    )
    return replace(
        s,
        seq=e.seq,
        steps=steps,
        timers=_without_timers(s.timers, e.step_id, _SIGNAL_TIMERS),
        signals=tuple(signals),
        signal_command_ids=seen,
    )


def _timer_scheduled(s: RunState, e: ev.TimerScheduled) -> RunState:
    timers = dict(s.timers)
    timers[e.timer_id] = PendingTimer(e.timer_id, e.fire_at_ms, e.purpose, e.step_id, e.attempt)
    return _next(s, e.seq, timers=timers)


def _timer_fired(s: RunState, e: ev.TimerFired) -> RunState:
    timers = dict(s.timers)
    timers.pop(e.timer_id, None)
    return _next(s, e.seq, timers=timers)


def _command_rejected(s: RunState, e: ev.CommandRejected) -> RunState:
    return _next(s, e.seq)


_APPLY: dict[type[ev.Event], Callable[[RunState, Any], RunState]] = {
    ev.RunCompleted: _run_completed,
    ev.RunFailed: _run_failed,
    ev.RunCancelled: _run_cancelled,
    ev.StepScheduled: _step_scheduled,
    ev.StepSkipped: _step_skipped,
    ev.StepDispatched: _step_dispatched,
    ev.StepStarted: _step_started,
    ev.StepHeartbeat: _step_heartbeat,
    ev.StepSucceeded: _step_succeeded,
    ev.StepRetryScheduled: _step_retry_scheduled,
    ev.StepFailed: _step_failed,
    ev.StepTimedOut: _step_timed_out,
    ev.StepCancelled: _step_cancelled,
    ev.ApprovalRequested: _approval_requested,
    ev.ApprovalGranted: _approval_granted,
    ev.ApprovalRejected: _approval_rejected,
    ev.SignalAwaited: _signal_awaited,
    ev.SignalReceived: _signal_received,
    ev.TimerScheduled: _timer_scheduled,
    ev.TimerFired: _timer_fired,
    ev.CommandRejected: _command_rejected,
}


def retire(state: RunState) -> RunState:
    """A finished run, reduced to what deciding any later command reads.

    Once a run has finished, the decider only answers with nothing or a
    ``CommandRejected`` — it reads the status, seq, correlation id and what
    identifies a repeated ``StartRun`` — so a long-lived orchestrator keeps this
    instead of the whole state. The definition object is shared, not copied.
    """
    if not state.status.finished:
        raise ValueError(f"run {state.run_id} is {state.status.value}: only a finished run retires")
    return RunState(
        run_id=state.run_id,
        definition=state.definition,
        input=None,
        idempotency_key=state.idempotency_key,
        jitter_seed=state.jitter_seed,
        correlation_id=state.correlation_id,
        start_command_id=state.start_command_id,
        started_at_ms=state.started_at_ms,
        seq=state.seq,
        status=state.status,
        steps={},
        timers={},
        order=(),
        step_defs={},
        error=state.error,
        finished_at_ms=state.finished_at_ms,
    )
