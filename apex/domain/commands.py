"""Commands: everything that may change a run.

Every command carries what a pure decider must not find for itself: its id
(the causation of the events it yields), the run it targets, the time it was
issued (the decider reads no clock) and a correlation id that follows a whole
business transaction. ``StartRun`` also carries the jitter seed for retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from apex.domain.definitions import JSON, WorkflowDefinition


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    command_id: str
    run_id: str
    issued_at_ms: int
    correlation_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StartRun(Command):
    definition_name: str
    definition_version: int | None = None
    """``None``: the latest registered version (resolved by the runtime)."""
    input: JSON = field(default_factory=dict)
    idempotency_key: str = ""
    jitter_seed: int = 0
    definition: WorkflowDefinition | None = None
    """Filled by the runtime from ``apex.definitions`` before ``decide``; the
    decider rejects a StartRun whose definition could not be resolved."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRun(Command):
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SendSignal(Command):
    name: str
    payload: JSON = None
    correlation_key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ApproveStep(Command):
    step_id: str
    approver: str = ""
    comment: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectStep(Command):
    step_id: str
    approver: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportTaskStarted(Command):
    step_id: str
    attempt: int
    worker_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportTaskHeartbeat(Command):
    step_id: str
    attempt: int
    worker_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportTaskSucceeded(Command):
    step_id: str
    attempt: int
    output: JSON = None
    worker_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportTaskFailed(Command):
    step_id: str
    attempt: int
    error: str
    retryable: bool = True
    worker_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FireTimer(Command):
    timer_id: str


COMMAND_TYPES: tuple[type[Command], ...] = (
    StartRun,
    CancelRun,
    SendSignal,
    ApproveStep,
    RejectStep,
    ReportTaskStarted,
    ReportTaskHeartbeat,
    ReportTaskSucceeded,
    ReportTaskFailed,
    FireTimer,
)
