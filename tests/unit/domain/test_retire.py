"""A retired (finished, reduced) run decides every later command as the full one does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import workflow_definitions

from apex.domain import commands as cmd
from apex.domain import events as ev
from apex.domain.decider import decide
from apex.domain.definitions import WorkflowDefinition
from apex.domain.state import RunState, fold, retire

RUN = "run-1"


def _finish(definition: WorkflowDefinition, cancel: bool) -> RunState:
    """Start a run and finish it: cancel it, or succeed/approve/skip everything."""
    start = cmd.StartRun(
        command_id="start",
        run_id=RUN,
        issued_at_ms=0,
        definition_name=definition.name,
        idempotency_key="key",
        definition=definition,
        input=_input_for(definition),
    )
    events = decide(None, start)
    state = fold(events)
    assert state is not None
    n = 0
    while not state.status.finished and n < 200:
        n += 1
        if cancel:
            command: cmd.Command = cmd.CancelRun(command_id=f"c{n}", run_id=RUN, issued_at_ms=n)
        else:
            waiting = [
                s for s, st_ in state.steps.items() if st_.status.value == "awaiting_approval"
            ]
            active = [s for s, st_ in state.steps.items() if st_.status.active]
            if waiting:
                command = cmd.ApproveStep(
                    command_id=f"c{n}", run_id=RUN, issued_at_ms=n, step_id=waiting[0]
                )
            elif active:
                sid = active[0]
                command = cmd.ReportTaskSucceeded(
                    command_id=f"c{n}",
                    run_id=RUN,
                    issued_at_ms=n,
                    step_id=sid,
                    attempt=state.steps[sid].attempt,
                    output={},
                )
            else:
                command = cmd.CancelRun(command_id=f"c{n}", run_id=RUN, issued_at_ms=n)
        state = fold(decide(state, command), state)
        assert state is not None
    assert state.status.finished
    return state


_SAMPLE = {
    "string": "s",
    "integer": 1,
    "number": 1.5,
    "boolean": True,
    "object": {},
    "array": [],
    "any": "x",
}


def _input_for(definition: WorkflowDefinition) -> dict[str, object]:
    """A run input that satisfies the definition's input contract."""
    return {name: _SAMPLE[spec.type.value] for name, spec in definition.input.items()}


def _later_commands(state: RunState) -> list[cmd.Command]:
    env = {"run_id": RUN, "issued_at_ms": 10_000}
    step = next(iter(state.definition.steps)).id if state.definition.steps else "none"
    return [
        cmd.StartRun(command_id="start", definition_name="x", **env),
        cmd.StartRun(command_id="other", definition_name="x", idempotency_key="key", **env),
        cmd.StartRun(command_id="other", definition_name="x", idempotency_key="new", **env),
        cmd.CancelRun(command_id="k1", **env),
        cmd.SendSignal(command_id="k2", name="go", **env),
        cmd.ApproveStep(command_id="k3", step_id=step, **env),
        cmd.RejectStep(command_id="k4", step_id=step, **env),
        cmd.ReportTaskStarted(command_id="k5", step_id=step, attempt=1, **env),
        cmd.ReportTaskHeartbeat(command_id="k6", step_id=step, attempt=1, **env),
        cmd.ReportTaskSucceeded(command_id="k7", step_id=step, attempt=1, **env),
        cmd.ReportTaskFailed(command_id="k8", step_id=step, attempt=9, error="x", **env),
        cmd.FireTimer(command_id="k9", timer_id="run:timeout", **env),
    ]


@settings(max_examples=25, deadline=None)
@given(workflow_definitions(max_steps=6, with_approvals=True), st.booleans())
def test_retired_run_decides_later_commands_like_the_full_state(
    definition: WorkflowDefinition, cancel: bool
) -> None:
    full = _finish(definition, cancel)
    retired = retire(full)
    for command in _later_commands(full):
        from_full = decide(full, command)
        assert decide(retired, command) == from_full
        assert all(isinstance(e, ev.CommandRejected) for e in from_full)


def test_a_running_run_does_not_retire() -> None:
    from tests.unit.domain.decider_strategies import step as make_step
    from tests.unit.domain.decider_strategies import workflow as make_workflow

    definition = make_workflow(make_step("a"))
    start = cmd.StartRun(
        command_id="s",
        run_id=RUN,
        issued_at_ms=0,
        definition_name=definition.name,
        definition=definition,
    )
    state = fold(decide(None, start))
    assert state is not None
    try:
        retire(state)
    except ValueError as exc:
        assert "only a finished run retires" in str(exc)
    else:
        raise AssertionError("a running run retired")
