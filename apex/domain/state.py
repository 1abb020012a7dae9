"""A run's state, and ``evolve``: the state after one more event.

``evolve`` is the only way a state changes; folding a run's events through it
reproduces the state the decider reasoned about (invariant 3). It refuses an
event whose ``seq`` is not the next one, so a gap or a duplicate in a log can
never fold silently into a wrong state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from apex.domain import events as ev
from apex.domain.definitions import JSON, GateWhen, WorkflowDefinition
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
    signals: tuple[BufferedSignal, ...] = ()
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
    return apply(replace(state, seq=event.seq), event)


# -- one rule per event type ---------------------------------------------------------


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
    )


def _with_step(s: RunState, step_id: str, step: StepState) -> RunState:
    steps = dict(s.steps)
    steps[step_id] = step
    return replace(s, steps=steps)


def _drop_timers(s: RunState, step_id: str, purposes: frozenset[str]) -> RunState:
    kept = {
        k: t for k, t in s.timers.items() if not (t.step_id == step_id and t.purpose in purposes)
    }
    return s if len(kept) == len(s.timers) else replace(s, timers=kept)


_ATTEMPT_TIMERS = frozenset({"step_timeout"})
_ALL_STEP_TIMERS = frozenset({"step_timeout", "retry", "approval_deadline", "signal_deadline"})


def _finish_run(s: RunState, status: RunStatus, at: int) -> RunState:
    return replace(s, status=status, timers={}, finished_at_ms=at)


def _run_completed(s: RunState, e: ev.RunCompleted) -> RunState:
    return replace(_finish_run(s, RunStatus.COMPLETED, e.occurred_at_ms), outputs=e.outputs)


def _run_failed(s: RunState, e: ev.RunFailed) -> RunState:
    return replace(_finish_run(s, RunStatus.FAILED, e.occurred_at_ms), error=e.error)


def _run_cancelled(s: RunState, e: ev.RunCancelled) -> RunState:
    return replace(_finish_run(s, RunStatus.CANCELLED, e.occurred_at_ms), error=e.reason)


def _step_scheduled(s: RunState, e: ev.StepScheduled) -> RunState:
    return _with_step(s, e.step_id, replace(s.steps[e.step_id], status=StepStatus.SCHEDULED))


def _step_skipped(s: RunState, e: ev.StepSkipped) -> RunState:
    step = replace(
        s.steps[e.step_id], status=StepStatus.SKIPPED, finished_at_ms=e.occurred_at_ms
    )
    return _with_step(s, e.step_id, step)


def _step_dispatched(s: RunState, e: ev.StepDispatched) -> RunState:
    old = s.steps[e.step_id]
    step = replace(
        old,
        status=StepStatus.DISPATCHED,
        attempt=e.attempt,
        input=e.input,
        last_activity_ms=e.occurred_at_ms,
        started_at_ms=old.started_at_ms if old.started_at_ms is not None else e.occurred_at_ms,
    )
    return _drop_timers(_with_step(s, e.step_id, step), e.step_id, frozenset({"retry"}))


def _step_started(s: RunState, e: ev.StepStarted) -> RunState:
    step = replace(
        s.steps[e.step_id],
        status=StepStatus.RUNNING,
        worker_id=e.worker_id,
        last_activity_ms=e.occurred_at_ms,
    )
    return _with_step(s, e.step_id, step)


def _step_heartbeat(s: RunState, e: ev.StepHeartbeat) -> RunState:
    step = replace(s.steps[e.step_id], last_activity_ms=e.occurred_at_ms)
    return _with_step(s, e.step_id, step)


def _step_succeeded(s: RunState, e: ev.StepSucceeded) -> RunState:
    step = replace(
        s.steps[e.step_id],
        status=StepStatus.SUCCEEDED,
        output=e.output,
        error=None,
        finished_at_ms=e.occurred_at_ms,
    )
    return _drop_timers(_with_step(s, e.step_id, step), e.step_id, _ATTEMPT_TIMERS)


def _step_retry_scheduled(s: RunState, e: ev.StepRetryScheduled) -> RunState:
    step = replace(
        s.steps[e.step_id], status=StepStatus.RETRY_WAIT, attempt=e.next_attempt, error=e.error
    )
    return _drop_timers(_with_step(s, e.step_id, step), e.step_id, _ATTEMPT_TIMERS)


def _step_failed(s: RunState, e: ev.StepFailed) -> RunState:
    step = replace(
        s.steps[e.step_id],
        status=StepStatus.FAILED,
        error=e.error,
        finished_at_ms=e.occurred_at_ms,
    )
    return _drop_timers(_with_step(s, e.step_id, step), e.step_id, _ALL_STEP_TIMERS)


def _step_timed_out(s: RunState, e: ev.StepTimedOut) -> RunState:
    return _drop_timers(s, e.step_id, _ATTEMPT_TIMERS)


def _step_cancelled(s: RunState, e: ev.StepCancelled) -> RunState:
    step = replace(
        s.steps[e.step_id],
        status=StepStatus.CANCELLED,
        error=e.reason,
        finished_at_ms=e.occurred_at_ms,
    )
    return _drop_timers(_with_step(s, e.step_id, step), e.step_id, _ALL_STEP_TIMERS)


def _approval_requested(s: RunState, e: ev.ApprovalRequested) -> RunState:
    step = replace(s.steps[e.step_id], status=StepStatus.AWAITING_APPROVAL, gate=e.when)
    return _with_step(s, e.step_id, step)


def _approval_granted(s: RunState, e: ev.ApprovalGranted) -> RunState:
    old = s.steps[e.step_id]
    # A gate after the step held its output until now; a gate before it
    # releases the step for dispatch, which the decider emits next.
    status = StepStatus.SUCCEEDED if old.gate is GateWhen.AFTER else StepStatus.SCHEDULED
    step = replace(old, status=status, approval_granted=True, gate=None)
    return _drop_timers(_with_step(s, e.step_id, step), e.step_id, frozenset({"approval_deadline"}))


def _approval_rejected(s: RunState, e: ev.ApprovalRejected) -> RunState:
    return _drop_timers(s, e.step_id, frozenset({"approval_deadline"}))


def _signal_awaited(s: RunState, e: ev.SignalAwaited) -> RunState:
    step = replace(s.steps[e.step_id], status=StepStatus.AWAITING_SIGNAL)
    return _with_step(s, e.step_id, step)


def _signal_received(s: RunState, e: ev.SignalReceived) -> RunState:
    if e.step_id is None:
        buffered = BufferedSignal(e.name, e.payload, e.correlation_key)
        return replace(s, signals=(*s.signals, buffered))
    # Releasing a step consumes the first matching buffered signal, if it came early.
    signals = list(s.signals)
    for i, sig in enumerate(signals):
        if sig.name == e.name and sig.correlation_key == e.correlation_key:
            del signals[i]
            break
    step = replace(s.steps[e.step_id], status=StepStatus.SCHEDULED, signal_payload=e.payload)
    s = _with_step(replace(s, signals=tuple(signals)), e.step_id, step)
    return _drop_timers(s, e.step_id, frozenset({"signal_deadline"}))


def _timer_scheduled(s: RunState, e: ev.TimerScheduled) -> RunState:
    timers = dict(s.timers)
    timers[e.timer_id] = PendingTimer(e.timer_id, e.fire_at_ms, e.purpose, e.step_id, e.attempt)
    return replace(s, timers=timers)


def _timer_fired(s: RunState, e: ev.TimerFired) -> RunState:
    timers = dict(s.timers)
    timers.pop(e.timer_id, None)
    return replace(s, timers=timers)


def _command_rejected(s: RunState, e: ev.CommandRejected) -> RunState:
    return s


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
