"""Runs share what says nothing of them (step states, empty maps and sets); one run's
events must never show in another run's state through what they share."""

from __future__ import annotations

import pytest

from apex.domain import commands as cmd
from apex.domain.decider import decide_and_evolve
from apex.domain.definitions import (
    ApprovalGate,
    GateWhen,
    SignalWait,
    StepDefinition,
    WorkflowDefinition,
)
from apex.domain.state import RunState, StepStatus, fold, retire

GATED = WorkflowDefinition(
    name="gated",
    version=1,
    steps=(
        StepDefinition("review", "cap", {}, approval=ApprovalGate(GateWhen.BEFORE)),
        StepDefinition("after", "cap", {}, ("review",)),
    ),
)
WAITS = WorkflowDefinition(
    name="waits",
    version=1,
    steps=(
        StepDefinition("gate", "cap", {}, approval=ApprovalGate(GateWhen.BEFORE, deadline_ms=50)),
        StepDefinition("sig", "cap", {}, wait_for_signal=SignalWait("go")),
    ),
)


class Run:
    """One run driven through the decider, with every event it emitted."""

    def __init__(self, run_id: str, definition: WorkflowDefinition) -> None:
        self.run_id = run_id
        self.events: list[object] = []
        self.state: RunState | None = None
        self.n = 0
        self.send(
            cmd.StartRun,
            definition_name=definition.name,
            definition=definition,
            input={"run": run_id},
        )

    def send(self, command_type: type[cmd.Command], **fields: object) -> None:
        self.n += 1
        command = command_type(  # type: ignore[call-arg]
            command_id=f"{self.run_id}-c{self.n}", run_id=self.run_id, issued_at_ms=self.n, **fields
        )
        events, self.state = decide_and_evolve(self.state, command)
        self.events.extend(events)

    @property
    def run(self) -> RunState:
        assert self.state is not None
        return self.state


def test_parked_runs_share_their_step_states_and_empty_maps() -> None:
    a, b = Run("a", GATED), Run("b", GATED)
    assert a.run.steps["review"].status is StepStatus.AWAITING_APPROVAL
    assert a.run.steps["review"] is b.run.steps["review"]
    assert a.run.steps["after"] is b.run.steps["after"]
    assert a.run.timers is b.run.timers
    assert a.run.signal_command_ids is b.run.signal_command_ids
    assert a.run.steps is not b.run.steps  # the map itself is each run's own


def test_evolving_one_run_never_changes_another() -> None:
    a, b, parked = Run("a", WAITS), Run("b", WAITS), Run("p", GATED)
    before, parked_before = repr(b.run), repr(parked.run)
    a.send(cmd.ApproveStep, step_id="gate")
    a.send(cmd.SendSignal, name="go", payload={"from": "a"})
    a.send(cmd.ReportTaskStarted, step_id="gate", attempt=1, worker_id="w-a")
    a.send(cmd.ReportTaskSucceeded, step_id="gate", attempt=1, output={"a": 1})
    Run("c", WAITS).send(cmd.ApproveStep, step_id="gate")
    Run("d", GATED).send(cmd.ApproveStep, step_id="review")
    assert a.run.steps["gate"].status is StepStatus.SUCCEEDED
    assert a.run.signal_command_ids == {"a-c3"}
    assert repr(b.run) == before
    assert repr(parked.run) == parked_before
    assert parked.run == fold(parked.events)  # type: ignore[arg-type]
    assert b.run == fold(b.events)  # type: ignore[arg-type]
    assert b.run.signal_command_ids == frozenset()
    assert b.run.steps["gate"].status is StepStatus.AWAITING_APPROVAL
    assert b.run.steps["gate"].output is None
    assert b.run.steps["sig"].signal_payload is None


def test_a_timer_of_one_run_is_not_in_another() -> None:
    gated = Run("g", GATED)
    waits = Run("w", WAITS)  # the approval deadline schedules a timer
    assert gated.run.timers == {}
    assert [t.purpose for t in waits.run.timers.values()] == ["approval_deadline"]
    waits.send(cmd.ApproveStep, step_id="gate")  # drops the timer again
    assert waits.run.timers == {}
    assert gated.run.timers == {}
    assert Run("g2", GATED).run.timers == {}


def test_the_shared_empty_timers_cannot_be_filled() -> None:
    run = Run("a", GATED).run
    with pytest.raises(TypeError):
        run.timers["t"] = None  # type: ignore[index]
    with pytest.raises(AttributeError):
        run.timers.clear()  # type: ignore[attr-defined]


def test_a_later_command_to_a_retired_run_leaves_other_retired_runs_alone() -> None:
    runs = [Run(run_id, GATED) for run_id in ("a", "b")]
    for run in runs:
        run.send(cmd.CancelRun, reason="done")
        run.state = retire(run.run)
    a, b = runs
    assert a.run.steps is b.run.steps and a.run.timers is b.run.timers  # shared, empty
    before = repr(b.run)
    a.send(cmd.SendSignal, name="go")
    a.send(cmd.ApproveStep, step_id="review")
    assert a.run.seq > b.run.seq
    assert repr(b.run) == before
    assert b.run.steps == {} and b.run.timers == {} and b.run.signal_command_ids == frozenset()


def test_shared_step_states_equal_what_folding_builds() -> None:
    """A shared state stands for an equal one: folding a run's events gives the same run."""
    run = Run("a", WAITS)
    run.send(cmd.ApproveStep, step_id="gate")
    run.send(cmd.SendSignal, name="go", payload=None)
    for events in (run.events[:3], run.events):
        folded = fold(events)  # type: ignore[arg-type]
        assert folded is not None
        assert folded == fold(events)  # type: ignore[arg-type]
    assert fold(run.events) == run.run  # type: ignore[arg-type]


def test_later_states_share_an_unchanged_timer_map_and_never_change_an_earlier_one() -> None:
    run = Run("w", WAITS)  # the approval deadline schedules a timer
    parked, parked_events = run.run, list(run.events)
    timers = dict(parked.timers)
    run.send(cmd.SendSignal, name="go")  # changes no timer: the map is shared
    assert run.run.timers is parked.timers
    run.send(cmd.ApproveStep, step_id="gate")  # drops the timer: a new map
    assert run.run.timers == {}
    run.send(cmd.FireTimer, timer_id=next(iter(timers)))
    assert parked.timers == timers
    assert parked == fold(parked_events)  # type: ignore[arg-type]
