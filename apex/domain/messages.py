"""Outbound records derived from events: task dispatches and results.

The orchestrator writes them in the same Kafka transaction as the events they
come from, so a dispatch exists exactly when its ``StepDispatched`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from apex.domain.definitions import JSON


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDispatch:
    """What a worker of ``capability`` receives on ``apex.tasks.<capability>``."""

    run_id: str
    step_id: str
    attempt: int
    capability: str
    input: JSON
    timeout_ms: int | None
    dispatched_at_ms: int
    definition: str
    """``name@version`` of the run's workflow."""
    correlation_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """One per run, when it ends; ``status`` is completed, failed or cancelled."""

    run_id: str
    definition: str
    status: str
    outputs: JSON
    error: str | None
    started_at_ms: int
    finished_at_ms: int
    correlation_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepResult:
    """One per finished step that its definition marks ``publish``."""

    run_id: str
    definition: str
    step_id: str
    attempt: int
    status: str
    output: JSON
    error: str | None
    finished_at_ms: int
    correlation_id: str
