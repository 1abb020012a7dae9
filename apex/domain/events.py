"""Events: everything that did change a run. Only the orchestrator writes them.

Each event has a per-run ``seq`` that is gapless from 1 (``RunStarted`` is 1),
the id of the command that caused it and the run's correlation id.
``CommandRejected`` for a run that does not exist has ``seq == 0``: it belongs
to no run's history and folding ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass

from apex.domain.definitions import JSON, GateWhen, WorkflowDefinition


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    run_id: str
    seq: int
    causation_id: str
    correlation_id: str
    occurred_at_ms: int

    @property
    def event_id(self) -> str:
        return f"{self.run_id}/{self.seq}"


# -- run lifecycle ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Event):
    """Carries the whole definition: a run finishes on the version it started on,
    and the log alone is enough to rebuild it."""

    definition: WorkflowDefinition
    input: JSON
    idempotency_key: str
    jitter_seed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCompleted(Event):
    outputs: JSON


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFailed(Event):
    error: str
    step_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCancelled(Event):
    reason: str


# -- steps -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StepScheduled(Event):
    """Every dependency of the step succeeded (or was skipped)."""

    step_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepSkipped(Event):
    step_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepDispatched(Event):
    """The step's attempt is sent to ``apex.tasks.<capability>`` in the same
    transaction as this event."""

    step_id: str
    attempt: int
    capability: str
    input: JSON
    timeout_ms: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStarted(Event):
    step_id: str
    attempt: int
    worker_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepHeartbeat(Event):
    """A sign of life: the attempt's timeout counts again from now."""

    step_id: str
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StepSucceeded(Event):
    step_id: str
    attempt: int
    output: JSON


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRetryScheduled(Event):
    """An attempt failed or timed out and another one will follow after a backoff."""

    step_id: str
    failed_attempt: int
    next_attempt: int
    backoff_ms: int
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFailed(Event):
    """The step failed for good (no attempt left, not retryable, or rejected)."""

    step_id: str
    attempt: int
    error: str
    retryable: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StepTimedOut(Event):
    step_id: str
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StepCancelled(Event):
    """A pending step that will not run, or a running one told to stop."""

    step_id: str
    reason: str
    was_running: bool


# -- approvals and signals ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalRequested(Event):
    step_id: str
    when: GateWhen
    deadline_at_ms: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalGranted(Event):
    step_id: str
    approver: str
    comment: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalRejected(Event):
    step_id: str
    approver: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalAwaited(Event):
    step_id: str
    name: str
    correlation_key: str | None
    deadline_at_ms: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalReceived(Event):
    """``step_id`` is the step it released, or ``None`` when none waits yet (the
    signal is kept and releases the step when it starts waiting)."""

    name: str
    payload: JSON
    correlation_key: str | None
    step_id: str | None


# -- timers and refusals -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerScheduled(Event):
    """A durable timer; the timer service sends ``FireTimer`` at ``fire_at_ms``.

    ``purpose`` is one of ``retry``, ``step_timeout``, ``approval_deadline``,
    ``signal_deadline``, ``run_timeout``.
    """

    timer_id: str
    fire_at_ms: int
    purpose: str
    step_id: str | None
    attempt: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired(Event):
    timer_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandRejected(Event):
    command_type: str
    reason: str


EVENT_TYPES: tuple[type[Event], ...] = (
    RunStarted,
    RunCompleted,
    RunFailed,
    RunCancelled,
    StepScheduled,
    StepSkipped,
    StepDispatched,
    StepStarted,
    StepHeartbeat,
    StepSucceeded,
    StepRetryScheduled,
    StepFailed,
    StepTimedOut,
    StepCancelled,
    ApprovalRequested,
    ApprovalGranted,
    ApprovalRejected,
    SignalAwaited,
    SignalReceived,
    TimerScheduled,
    TimerFired,
    CommandRejected,
)

TERMINAL_RUN_EVENTS: tuple[type[Event], ...] = (RunCompleted, RunFailed, RunCancelled)
