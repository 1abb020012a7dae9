"""Support for the decider's tests: definition builders, a run driver, DAG strategies.

:class:`RunDriver` sends commands to one run through ``decide_and_evolve`` and
folds what comes back through ``evolve``, checking on every command what must
hold for any command at all: ``seq`` continues gaplessly, every event names the
command that caused it and the run's correlation id, ``decide`` leaves the state
it was given untouched, the state it returns is the fold of its events, and a
``CommandRejected`` changes nothing but ``seq``.

:func:`workflow_dags` draws random valid DAG definitions whose outputs,
conditions, gates and signals the property tests' simulated world knows how to
satisfy (or break, on purpose).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import strategies as st

from apex.domain import commands as cmd
from apex.domain import events as ev
from apex.domain.decider import decide_and_evolve
from apex.domain.definitions import (
    JSON,
    ApprovalGate,
    Condition,
    ConditionOp,
    FailurePolicy,
    FieldSpec,
    FieldType,
    GateWhen,
    Ref,
    RetryPolicy,
    SignalWait,
    StepDefinition,
    WorkflowDefinition,
)
from apex.domain.state import RunState, StepState, fold

# -- definitions by hand ---------------------------------------------------------------


def step(step_id: str, *depends_on: str, **fields: Any) -> StepDefinition:
    """A step of capability ``cap`` (or ``fields['capability']``) after ``depends_on``."""
    fields.setdefault("capability", "cap")
    return StepDefinition(id=step_id, depends_on=depends_on, **fields)


def workflow(*steps: StepDefinition, **fields: Any) -> WorkflowDefinition:
    fields.setdefault("name", "wf")
    fields.setdefault("version", 1)
    return WorkflowDefinition(steps=steps, **fields)


def input_ref(*path: str) -> Ref:
    return Ref("input", path)


def output_ref(step_id: str, *path: str) -> Ref:
    return Ref("steps", path, step_id=step_id)


# -- driving one run -----------------------------------------------------------------------


class RunDriver:
    """One run, driven command by command; every answer is checked and folded.

    Command helpers stamp a fresh command id and the driver's clock (``now``,
    moved with :meth:`at` or :meth:`later`); :meth:`send` takes any command,
    e.g. one sent before, to deliver it again.
    """

    def __init__(
        self,
        definition: WorkflowDefinition | None,
        *,
        run_id: str = "run-1",
        correlation_id: str = "corr-1",
        refold_every: int = 1,
    ) -> None:
        self.definition = definition
        self.run_id = run_id
        self.correlation_id = correlation_id
        self.state: RunState | None = None
        self.log: list[ev.Event] = []
        """The run's history: every event with ``seq > 0``, in order."""
        self.sent: list[tuple[cmd.Command, list[ev.Event]]] = []
        self.now = 0
        self.observers: list[Callable[[RunState | None, cmd.Command, list[ev.Event]], None]] = []
        """Called with (state before, command, answer) after each command is folded."""
        self._ids = 0
        self._refold_every = refold_every

    # clock and ids

    def at(self, ms: int) -> RunDriver:
        self.now = ms
        return self

    def later(self, ms: int) -> RunDriver:
        self.now += ms
        return self

    def next_id(self) -> str:
        self._ids += 1
        return f"cmd-{self._ids}"

    def _base(self) -> dict[str, Any]:
        return {
            "command_id": self.next_id(),
            "run_id": self.run_id,
            "issued_at_ms": self.now,
            "correlation_id": self.correlation_id,
        }

    # sending

    def send(self, command: cmd.Command) -> list[ev.Event]:
        before = self.state
        snapshot = _snapshot(before)
        events, decided = decide_and_evolve(before, command)
        assert _snapshot(before) == snapshot, "decide changed the state it was given"
        self._check_answer(before, command, events)
        self.state = fold(events, before)
        assert decided == self.state, "the decider's state is not the fold of its events"
        self.log.extend(e for e in events if e.seq > 0)
        self.sent.append((command, events))
        if self._refold_every and len(self.sent) % self._refold_every == 0:
            self.check_fold()
        for observer in self.observers:
            observer(before, command, events)
        return events

    def check_fold(self) -> None:
        """Folding the whole history from nothing gives the state held now."""
        assert fold(self.log) == self.state
        assert [e.seq for e in self.log] == list(range(1, len(self.log) + 1))

    def _check_answer(
        self, before: RunState | None, command: cmd.Command, events: list[ev.Event]
    ) -> None:
        first_seq = 0 if before is None else before.seq
        for i, event in enumerate(events):
            assert event.run_id == command.run_id
            assert event.causation_id == command.command_id
            assert event.occurred_at_ms == command.issued_at_ms
            if event.seq == 0:
                assert before is None and isinstance(event, ev.CommandRejected), event
                assert len(events) == 1
                continue
            assert event.seq == first_seq + i + 1, (first_seq, events)
            if before is not None:
                assert event.correlation_id == before.correlation_id
                if before.status.finished:
                    assert isinstance(event, ev.CommandRejected), f"{event} after the end"
        rejected = [e for e in events if isinstance(e, ev.CommandRejected)]
        if rejected:
            assert events == rejected[:1], f"a rejection comes alone: {events}"
            assert rejected[0].command_type == type(command).__name__
            if before is not None:
                after = fold(events, before)
                assert after == dataclasses.replace(before, seq=before.seq + 1)

    # command helpers

    def start(
        self,
        input: JSON = None,
        *,
        idempotency_key: str = "",
        jitter_seed: int = 0,
        definition: Any = "the driver's",
        command_id: str | None = None,
    ) -> list[ev.Event]:
        """Start the run; ``definition=None`` sends a start whose definition is unresolved."""
        if definition == "the driver's":
            definition = self.definition
        base = self._base()
        if command_id is not None:
            base["command_id"] = command_id
        return self.send(
            cmd.StartRun(
                **base,
                definition_name=definition.name if definition else "missing",
                definition_version=definition.version if definition else None,
                input={} if input is None else input,
                idempotency_key=idempotency_key,
                jitter_seed=jitter_seed,
                definition=definition,
            )
        )

    def started(self, step_id: str, attempt: int = 1, worker_id: str = "w-1") -> list[ev.Event]:
        return self.send(
            cmd.ReportTaskStarted(
                **self._base(), step_id=step_id, attempt=attempt, worker_id=worker_id
            )
        )

    def heartbeat(self, step_id: str, attempt: int = 1) -> list[ev.Event]:
        return self.send(cmd.ReportTaskHeartbeat(**self._base(), step_id=step_id, attempt=attempt))

    def succeed(self, step_id: str, attempt: int = 1, output: JSON = None) -> list[ev.Event]:
        return self.send(
            cmd.ReportTaskSucceeded(**self._base(), step_id=step_id, attempt=attempt, output=output)
        )

    def fail(
        self, step_id: str, attempt: int = 1, error: str = "boom", *, retryable: bool = True
    ) -> list[ev.Event]:
        return self.send(
            cmd.ReportTaskFailed(
                **self._base(), step_id=step_id, attempt=attempt, error=error, retryable=retryable
            )
        )

    def fire(self, timer_id: str) -> list[ev.Event]:
        return self.send(cmd.FireTimer(**self._base(), timer_id=timer_id))

    def approve(self, step_id: str, approver: str = "ann") -> list[ev.Event]:
        return self.send(cmd.ApproveStep(**self._base(), step_id=step_id, approver=approver))

    def reject(self, step_id: str, approver: str = "ann", reason: str = "no") -> list[ev.Event]:
        return self.send(
            cmd.RejectStep(**self._base(), step_id=step_id, approver=approver, reason=reason)
        )

    def signal(self, name: str, payload: JSON = None, key: str | None = None) -> list[ev.Event]:
        return self.send(
            cmd.SendSignal(**self._base(), name=name, payload=payload, correlation_key=key)
        )

    def cancel(self, reason: str = "") -> list[ev.Event]:
        return self.send(cmd.CancelRun(**self._base(), reason=reason))

    # reading the run

    @property
    def run(self) -> RunState:
        assert self.state is not None, "the run has not started"
        return self.state

    def step(self, step_id: str) -> StepState:
        return self.run.steps[step_id]

    def timer(self, purpose: str, step_id: str | None = None) -> str:
        """The id of the one pending timer for ``purpose`` (and ``step_id``)."""
        ids = [
            t.timer_id
            for t in self.run.timers.values()
            if t.purpose == purpose and t.step_id == step_id
        ]
        assert len(ids) == 1, f"pending {purpose} timers of {step_id}: {ids}"
        return ids[0]


def _snapshot(state: RunState | None) -> Any:
    """What a mutation of a state's containers would change (its parts are frozen)."""
    if state is None:
        return None
    return (state, dict(state.steps), dict(state.timers), state.signals, state.seq)


def kinds(events: list[ev.Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def of_type(events: list[ev.Event], event_type: type[ev.Event]) -> list[Any]:
    return [e for e in events if isinstance(e, event_type)]


# -- random valid DAGs ---------------------------------------------------------------------

OUTPUT_CONTRACT: Mapping[str, FieldSpec] = {
    "flag": FieldSpec(FieldType.BOOLEAN),
    "n": FieldSpec(FieldType.INTEGER, required=False),
}
"""The output contract a random step may declare; the world's outputs fit it."""

INPUT_CONTRACT: Mapping[str, FieldSpec] = {
    "flag": FieldSpec(FieldType.BOOLEAN),
    "key": FieldSpec(FieldType.STRING),
    "x": FieldSpec(FieldType.INTEGER, required=False),
}
"""The input contract of every random workflow."""

SIGNAL_NAMES = ("go", "more")
CORRELATION_KEYS = ("k1", "k2")


def _sometimes(chance_in_4: int = 1) -> st.SearchStrategy[bool]:
    """True about ``chance_in_4`` times in four (and False when shrinking)."""
    return st.integers(0, 3).map(lambda n: n >= 4 - chance_in_4)


@st.composite
def _conditions(draw: st.DrawFn, deps: tuple[str, ...]) -> Condition:
    ref = (
        output_ref(draw(st.sampled_from(deps)), "flag")
        if deps and draw(st.booleans())
        else input_ref("flag")
    )
    op = draw(st.sampled_from([ConditionOp.TRUTHY, ConditionOp.EQ, ConditionOp.FALSY]))
    return Condition(ref, op, True if op is ConditionOp.EQ else None)


@st.composite
def _steps(
    draw: st.DrawFn,
    step_id: str,
    earlier: list[str],
    with_conditions: bool,
    with_approvals: bool,
    with_signals: bool,
    with_timeouts: bool,
) -> StepDefinition:
    deps: tuple[str, ...] = ()
    if earlier:
        chosen = draw(st.sets(st.sampled_from(earlier), max_size=3))
        deps = tuple(s for s in earlier if s in chosen)
    inputs: dict[str, Any] = {"x": input_ref("x")}
    for dep in deps:
        inputs[f"from_{dep}"] = output_ref(dep, "n")
    retry = RetryPolicy(
        max_attempts=draw(st.integers(1, 3)),
        initial_backoff_ms=draw(st.sampled_from([10, 100, 1_000])),
        max_backoff_ms=draw(st.sampled_from([50, 60_000])),
        multiplier=2.0,
        jitter=draw(st.sampled_from([0.0, 0.5, 1.0])),
    )
    timeout = draw(st.sampled_from([None, 50, 500])) if with_timeouts else None
    condition = draw(_conditions(deps)) if with_conditions and draw(_sometimes()) else None
    approval = None
    if with_approvals and draw(_sometimes()):
        approval = ApprovalGate(
            when=draw(st.sampled_from(list(GateWhen))),
            deadline_ms=draw(st.sampled_from([None, 1_000])),
            condition=draw(_conditions(deps)) if with_conditions and draw(_sometimes()) else None,
        )
    signal = None
    if with_signals and draw(_sometimes()):
        correlation: Ref | str | None = draw(st.sampled_from([None, "k1", input_ref("key")]))
        signal = SignalWait(
            name=draw(st.sampled_from(SIGNAL_NAMES)),
            correlation=correlation,
            deadline_ms=draw(st.sampled_from([None, 2_000])),
        )
    return StepDefinition(
        id=step_id,
        capability=draw(st.sampled_from(["summarize", "classify"])),
        inputs=inputs,
        depends_on=deps,
        retry=retry,
        timeout_ms=timeout,
        condition=condition,
        approval=approval,
        wait_for_signal=signal,
        output=OUTPUT_CONTRACT if draw(st.booleans()) else None,
        publish=draw(st.booleans()),
    )


@st.composite
def workflow_dags(
    draw: st.DrawFn,
    max_steps: int = 8,
    with_conditions: bool = True,
    with_approvals: bool = True,
    with_signals: bool = True,
    with_timeouts: bool = True,
) -> WorkflowDefinition:
    """A valid workflow: steps ``s0..`` each depending on some earlier ones."""
    count = draw(st.integers(1, max_steps))
    ids: list[str] = []
    steps = []
    for i in range(count):
        sid = f"s{i}"
        steps.append(
            draw(_steps(sid, ids, with_conditions, with_approvals, with_signals, with_timeouts))
        )
        ids.append(sid)
    outputs: dict[str, Ref] = {}
    if draw(_sometimes()):
        outputs = {"first": output_ref(ids[0]), "last_n": output_ref(ids[-1], "n")}
    return WorkflowDefinition(
        name="random",
        version=draw(st.integers(1, 3)),
        steps=tuple(steps),
        input=INPUT_CONTRACT,
        outputs=outputs,
        failure_policy=draw(st.sampled_from(list(FailurePolicy))),
        timeout_ms=draw(st.sampled_from([None, None, None, 5_000])) if with_timeouts else None,
    )


def values_for(contract: Mapping[str, FieldSpec] | None) -> st.SearchStrategy[JSON]:
    """Values that satisfy ``contract``; anything JSON-like when it is undeclared."""
    # Building strategies costs more than drawing from them: keep the ones for
    # this module's own contracts (the world asks for them at every report).
    if contract is None or contract is OUTPUT_CONTRACT or contract is INPUT_CONTRACT:
        key = id(contract)
        if key not in _KNOWN_VALUES:
            _KNOWN_VALUES[key] = _values_for(contract)
        return _KNOWN_VALUES[key]
    return _values_for(contract)


_KNOWN_VALUES: dict[int, st.SearchStrategy[JSON]] = {}


def _values_for(contract: Mapping[str, FieldSpec] | None) -> st.SearchStrategy[JSON]:
    if contract is None:
        return st.none() | _values_of(FieldType.ANY) | values_for(OUTPUT_CONTRACT)
    required = {n: _values_of(f.type) for n, f in contract.items() if f.required}
    optional = {n: st.none() | _values_of(f.type) for n, f in contract.items() if not f.required}
    return st.fixed_dictionaries(required, optional=optional)


def _values_of(field_type: FieldType) -> st.SearchStrategy[JSON]:
    scalars: dict[FieldType, st.SearchStrategy[JSON]] = {
        FieldType.STRING: st.sampled_from(CORRELATION_KEYS) | st.text(max_size=3),
        FieldType.INTEGER: st.integers(-2, 9),
        FieldType.NUMBER: st.integers(-2, 9) | st.floats(-1, 1),
        FieldType.BOOLEAN: st.booleans(),
    }
    if field_type in scalars:
        return scalars[FieldType(field_type)]
    if field_type is FieldType.OBJECT:
        return st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2)
    if field_type is FieldType.ARRAY:
        return st.lists(st.integers(0, 3), max_size=2)
    return st.one_of(list(scalars.values()))  # ANY: anything but null
