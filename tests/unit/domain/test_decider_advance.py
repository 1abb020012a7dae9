"""What the decider's shortcuts rest on: tables kept per definition, and runs at rest.

``_advance`` looks only at the dependents of the steps a decision finished, which
equals a scan of every step only because no run ever rests with a pending step
that could be scheduled or cancelled; the tables it reads (``step_graph``) are
kept per definition object, and must never be another definition's.
"""

from __future__ import annotations

import gc

from decider_strategies import workflow_dags
from hypothesis import given, settings
from hypothesis import strategies as st
from test_decider_properties import HEALTH, World, arbitrary_commands

from apex.domain import commands as cmd
from apex.domain.decider import decide_and_evolve
from apex.domain.definitions import StepDefinition, WorkflowDefinition
from apex.domain.state import RunState, StepStatus, step_graph

# Fewer examples than the decider's own properties, which play the same worlds.
AT_REST_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=HEALTH)

DONE = (StepStatus.SUCCEEDED, StepStatus.SKIPPED)
LOST = (StepStatus.FAILED, StepStatus.CANCELLED)


def assert_at_rest(state: RunState | None) -> None:
    """A running run has no pending step it could schedule or cancel, and a step to finish."""
    if state is None or state.status.finished:
        return
    for step in state.definition.steps:
        if state.steps[step.id].status is not StepStatus.PENDING:
            continue
        deps = [state.steps[dep].status for dep in step.depends_on]
        assert not all(s in DONE for s in deps), f"{step.id} could be scheduled: {deps}"
        assert not any(s in LOST for s in deps), f"{step.id} could be cancelled: {deps}"
    assert not all(s.status.finished for s in state.steps.values()), "every step finished"


@AT_REST_SETTINGS
@given(definition=workflow_dags(max_steps=8), data=st.data())
def test_a_run_played_by_a_world_rests_with_no_step_left_to_schedule_or_cancel(
    definition: WorkflowDefinition, data: st.DataObject
) -> None:
    world = World(definition, data)
    world.driver.observers.append(lambda *_: assert_at_rest(world.driver.state))
    world.play()


@AT_REST_SETTINGS
@given(definition=workflow_dags(max_steps=5), data=st.data())
def test_a_run_sent_any_commands_rests_with_no_step_left_to_schedule_or_cancel(
    definition: WorkflowDefinition, data: st.DataObject
) -> None:
    run_input = {"flag": True, "key": "k1"}  # as the other chaos test starts its runs
    state = decide_and_evolve(None, start("start", definition, "run-1", run_input))[1]
    assert_at_rest(state)
    for _ in range(data.draw(st.integers(0, 40), label="commands")):
        assert state is not None
        command = data.draw(arbitrary_commands(definition, sorted(state.timers)), label="command")
        state = decide_and_evolve(state, command)[1]
        assert_at_rest(state)


# -- tables kept per definition ----------------------------------------------------------


def start(
    command_id: str, definition: WorkflowDefinition, run_id: str, run_input: object = None
) -> cmd.StartRun:
    return cmd.StartRun(
        command_id=command_id,
        run_id=run_id,
        issued_at_ms=0,
        definition_name=definition.name,
        definition_version=definition.version,
        input={} if run_input is None else run_input,
        definition=definition,
    )


def chain(*ids: str) -> tuple[StepDefinition, ...]:
    return tuple(
        StepDefinition(sid, "cap", {}, (ids[i - 1],) if i else ()) for i, sid in enumerate(ids)
    )


def test_definitions_with_one_key_each_have_their_own_tables() -> None:
    # Redefined under the same name and version: only the object tells them apart.
    forward = WorkflowDefinition(name="w", version=1, steps=chain("x", "y", "z"))
    backward = WorkflowDefinition(name="w", version=1, steps=chain("z", "y", "x"))
    for definition in (forward, backward, forward, backward):
        graph = step_graph(definition)
        assert graph.order == tuple(s.id for s in definition.steps)
        first, second, third = graph.order
        assert graph.dependents[first] == (1,) and graph.dependents[third] == ()
        assert graph.roots == (0,) and graph.sinks == (third,)
        _, state = decide_and_evolve(None, start("s", definition, f"run-{first}"))
        assert state is not None
        assert state.steps[first].status is StepStatus.DISPATCHED
        assert state.steps[second].status is StepStatus.PENDING


def test_a_definition_made_after_another_is_gone_never_gets_its_tables() -> None:
    # Each definition is dropped before the next is made, so CPython hands the next
    # one the same memory (the same id) again and again; more than the cache keeps.
    for n in range(600):
        ids = tuple(f"s{n}-{i}" for i in range(1 + n % 4))
        definition = WorkflowDefinition(name="w", version=1, steps=chain(*ids))
        graph = step_graph(definition)
        assert graph.order == ids
        assert graph.step_defs == {s.id: s for s in definition.steps}
        assert graph.sinks == (ids[-1],)
        del definition, graph
        if n % 100 == 0:
            gc.collect()
