"""What the orchestrator sends besides events: task dispatches and results.

Derived from a decision's events and the run state they lead to, so the
orchestrator can write both in one transaction, and a replay can re-derive them.
"""

from __future__ import annotations

from collections.abc import Sequence

from apex.domain import events as ev
from apex.domain.frozen import constructor
from apex.domain.messages import RunResult, StepResult, TaskDispatch
from apex.domain.state import RunState

Outbound = TaskDispatch | RunResult | StepResult

# A dispatch for nearly every step: built like the events (:mod:`apex.domain.frozen`),
# by field name as the dataclasses are, without their frozen ``__init__``.
_new_dispatch = constructor(TaskDispatch)
_new_run_result = constructor(RunResult)
_new_step_result = constructor(StepResult)

_RUN_STATUS = {
    ev.RunCompleted: "completed",
    ev.RunFailed: "failed",
    ev.RunCancelled: "cancelled",
}


def outbound(state: RunState | None, events: Sequence[ev.Event]) -> list[Outbound]:
    """Dispatches and results for ``events``; ``state`` is the run after them."""
    if state is None:
        return []
    definition = state.definition
    out: list[Outbound] = []
    for event in events:
        if isinstance(event, ev.StepDispatched):
            out.append(
                _new_dispatch(
                    run_id=event.run_id,
                    step_id=event.step_id,
                    attempt=event.attempt,
                    capability=event.capability,
                    input=event.input,
                    timeout_ms=event.timeout_ms,
                    dispatched_at_ms=event.occurred_at_ms,
                    definition=definition.key,
                    correlation_id=event.correlation_id,
                )
            )
        elif isinstance(event, ev.StepSucceeded | ev.StepFailed):
            if definition.step(event.step_id).publish:
                succeeded = isinstance(event, ev.StepSucceeded)
                out.append(
                    _new_step_result(
                        run_id=event.run_id,
                        definition=definition.key,
                        step_id=event.step_id,
                        attempt=event.attempt,
                        status="succeeded" if succeeded else "failed",
                        output=event.output if isinstance(event, ev.StepSucceeded) else None,
                        error=event.error if isinstance(event, ev.StepFailed) else None,
                        finished_at_ms=event.occurred_at_ms,
                        correlation_id=event.correlation_id,
                    )
                )
        elif isinstance(event, ev.RunCompleted | ev.RunFailed | ev.RunCancelled):
            out.append(
                _new_run_result(
                    run_id=event.run_id,
                    definition=definition.key,
                    status=_RUN_STATUS[type(event)],
                    outputs=event.outputs if isinstance(event, ev.RunCompleted) else None,
                    error=None if isinstance(event, ev.RunCompleted) else state.error,
                    started_at_ms=state.started_at_ms,
                    finished_at_ms=event.occurred_at_ms,
                    correlation_id=event.correlation_id,
                )
            )
    return out
