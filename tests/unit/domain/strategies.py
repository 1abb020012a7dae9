"""Hypothesis strategies for workflow definitions, shared by the domain tests.

``workflow_definitions()`` draws definitions that :func:`validate` accepts:
random DAGs (declared in a shuffled order), random retry policies and
timeouts, references that only read upstream steps and declared contract
fields (also nested in list and mapping literals), literals that exercise the
``$.``/``$$.`` escape, and, on request, conditions, approval gates and signal
waits.

Strategies are built once at import; the parts that depend on the DAG drawn
so far (which references a step may make) are drawn directly, which keeps
generation fast enough for hypothesis' health checks.
"""

from __future__ import annotations

import string
from typing import Any

from hypothesis import strategies as st

from apex.domain.definitions import (
    ApprovalGate,
    Condition,
    ConditionOp,
    Contract,
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

SCALAR_TYPES = {FieldType.STRING, FieldType.INTEGER, FieldType.NUMBER, FieldType.BOOLEAN}
TRICKY_STRINGS = [
    "$.input.x",
    "$$.steps.a.output",
    "$",
    "$$",
    "$x",
    "$.",
    "yes",
    "null",
    "~",
    "1.5",
]
CAPABILITIES = ["parse", "classify", "call-llm", "route"]


def workflow_definitions(
    *,
    min_steps: int = 1,
    max_steps: int = 8,
    with_conditions: bool = True,
    with_approvals: bool = True,
    with_signals: bool = False,
) -> st.SearchStrategy[WorkflowDefinition]:
    """Valid definitions of ``min_steps``..``max_steps`` steps.

    ``with_conditions``: some steps have a skip condition. ``with_approvals``:
    some have an approval gate (before or after, maybe conditional, maybe with
    a deadline). ``with_signals``: some wait for a signal. Capabilities are
    drawn from :data:`CAPABILITIES`.
    """
    return _workflows(min_steps, max_steps, with_conditions, with_approvals, with_signals)


STEP_IDS = st.builds(
    str.__add__,
    st.sampled_from(string.ascii_letters + "_"),
    st.text(string.ascii_letters + string.digits + "_-", max_size=7),
)
"""Valid step ids (built rather than drawn from a regex: much faster)."""
FIELD_NAMES = st.one_of(
    st.text(string.ascii_lowercase + "_", min_size=1, max_size=6),
    st.text(min_size=1, max_size=4).filter(lambda name: "." not in name),
)
"""Contract field names: non-empty, no '.', sometimes not identifiers."""
CONTRACTS = st.dictionaries(
    FIELD_NAMES, st.builds(FieldSpec, st.sampled_from(FieldType), st.booleans()), max_size=4
)
_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(TRICKY_STRINGS),
)
_JSON_KEYS = st.text(max_size=4)
_JSON_SHALLOW = st.one_of(
    _JSON_SCALARS,
    st.lists(_JSON_SCALARS, max_size=3),
    st.dictionaries(_JSON_KEYS, _JSON_SCALARS, max_size=3),
)
JSON_LITERALS = st.one_of(
    _JSON_SHALLOW,
    st.lists(_JSON_SHALLOW, max_size=2),
    st.dictionaries(_JSON_KEYS, _JSON_SHALLOW, max_size=2),
)
"""JSON values, strings included that start with '$' (escaped in the format)."""
RETRY_POLICIES = st.one_of(
    st.just(RetryPolicy()),
    st.builds(
        lambda attempts, initial, spread, multiplier, jitter: RetryPolicy(
            attempts, initial, initial + spread, multiplier, jitter
        ),
        st.integers(1, 6),
        st.integers(1, 10_000),
        st.integers(0, 100_000),
        st.sampled_from([1.0, 1.5, 2.0, 3.0]) | st.floats(1, 4),
        st.sampled_from([0.0, 0.1, 1.0]) | st.floats(0, 1),
    ),
)
CONDITION_VALUES: dict[ConditionOp, st.SearchStrategy[Any]] = {
    ConditionOp.EQ: JSON_LITERALS,
    ConditionOp.NE: JSON_LITERALS,
    ConditionOp.IN: st.lists(JSON_LITERALS, max_size=3),
    ConditionOp.NOT_IN: st.lists(JSON_LITERALS, max_size=3),
    ConditionOp.GT: st.integers() | st.text(max_size=3),
    ConditionOp.GE: st.integers(),
    ConditionOp.LT: st.floats(allow_nan=False, allow_infinity=False),
    ConditionOp.LE: st.sampled_from(["a", "$.x", 3]),
    ConditionOp.TRUTHY: st.none(),
    ConditionOp.FALSY: st.none(),
    ConditionOp.EXISTS: st.none(),
}
DURATIONS = st.none() | st.integers(1, 10**8)
SUB_PATHS = st.lists(FIELD_NAMES, max_size=2)
NAMES = st.text(min_size=1, max_size=6)


@st.composite
def _workflows(
    draw: st.DrawFn,
    min_steps: int,
    max_steps: int,
    with_conditions: bool,
    with_approvals: bool,
    with_signals: bool,
) -> WorkflowDefinition:
    count = draw(st.integers(min_steps, max_steps))
    ids = draw(st.lists(STEP_IDS, min_size=count, max_size=count, unique=True))
    readable = _Readable(draw, draw(CONTRACTS))
    steps: list[StepDefinition] = []
    for position, step_id in enumerate(ids):
        depends_on = (
            draw(st.lists(st.sampled_from(ids[:position]), unique=True, max_size=3))
            if position
            else []
        )
        upstream = sorted(set(depends_on).union(*(readable.ancestors[dep] for dep in depends_on)))
        output = draw(st.none() | CONTRACTS)
        own = (step_id, output)
        steps.append(
            StepDefinition(
                id=step_id,
                capability=draw(st.sampled_from(CAPABILITIES)),
                inputs={
                    name: readable.input_value(upstream)
                    for name in draw(st.lists(NAMES, unique=True, max_size=4))
                },
                depends_on=tuple(depends_on),
                retry=draw(RETRY_POLICIES),
                timeout_ms=draw(DURATIONS),
                condition=readable.condition(upstream)
                if with_conditions and draw(st.booleans())
                else None,
                approval=readable.gate(upstream, own)
                if with_approvals and draw(st.booleans())
                else None,
                wait_for_signal=readable.signal_wait(upstream)
                if with_signals and draw(st.booleans())
                else None,
                output=output,
                publish=draw(st.booleans()),
            )
        )
        readable.add(step_id, upstream, output)
    steps, outputs = _outputs_without_dangling(draw, steps, readable)
    return WorkflowDefinition(
        name=draw(STEP_IDS),
        version=draw(st.integers(1, 1000)),
        steps=tuple(draw(st.permutations(steps))),
        input=readable.input_contract,
        outputs=outputs,
        failure_policy=draw(st.sampled_from(FailurePolicy)),
        timeout_ms=draw(DURATIONS),
        description=draw(st.text(max_size=20)),
    )


def _outputs_without_dangling(
    draw: st.DrawFn, steps: list[StepDefinition], readable: _Readable
) -> tuple[list[StepDefinition], dict[str, Ref]]:
    """No outputs, or outputs plus publish flags such that every sink is used."""
    if draw(st.booleans()):
        return steps, {}
    needed = {dep for step in steps for dep in step.depends_on}
    sinks = [step.id for step in steps if step.id not in needed]
    read = [sink for sink in sinks if draw(st.booleans())]
    published = {sink for sink in sinks if sink not in read}
    steps = [
        StepDefinition(**{**_fields(step), "publish": step.publish or step.id in published})
        for step in steps
    ]
    read = read or [draw(st.sampled_from([step.id for step in steps]))]
    names = draw(st.lists(NAMES, min_size=len(read), max_size=len(read), unique=True))
    return steps, {
        name: readable.output_ref(step_id) for name, step_id in zip(names, read, strict=True)
    }


def _fields(step: StepDefinition) -> dict[str, Any]:
    return {name: getattr(step, name) for name in StepDefinition.__dataclass_fields__}


class _Readable:
    """Draws what a step may read: the run input, and its upstream steps' outputs."""

    def __init__(self, draw: st.DrawFn, input_contract: Contract) -> None:
        self.draw = draw
        self.input_contract = input_contract
        self.ancestors: dict[str, list[str]] = {}
        self.outputs: dict[str, Contract | None] = {}

    def add(self, step_id: str, upstream: list[str], output: Contract | None) -> None:
        self.ancestors[step_id] = upstream
        self.outputs[step_id] = output

    def ref(self, upstream: list[str], own: tuple[str, Contract | None] | None = None) -> Ref:
        sources: list[tuple[str | None, Contract | None]] = [(None, self.input_contract or None)]
        sources += [(step_id, self.outputs[step_id]) for step_id in upstream]
        if own is not None:
            sources.append(own)
        step_id, contract = sources[self.draw(st.integers(0, len(sources) - 1))]
        path = self.path(contract)
        return Ref("input", path) if step_id is None else Ref("steps", path, step_id)

    def output_ref(self, step_id: str) -> Ref:
        return Ref("steps", self.path(self.outputs[step_id]), step_id)

    def path(self, contract: Contract | None) -> tuple[str, ...]:
        """A path a reference may read in a value of ``contract`` (None: undeclared)."""
        if contract is None:
            return tuple(self.draw(st.lists(FIELD_NAMES, max_size=3)))
        names = list(contract)
        choice = self.draw(st.integers(-1, len(names) - 1))
        if choice < 0:
            return ()
        name = names[choice]
        if FieldType(contract[name].type) in SCALAR_TYPES:
            return (name,)
        return (name, *self.draw(SUB_PATHS))

    def input_value(self, upstream: list[str]) -> Any:
        """A literal, a reference, or references nested in a list or mapping."""
        kind = self.draw(st.sampled_from(["literal", "ref", "list", "mapping"]))
        if kind == "literal":
            return self.draw(JSON_LITERALS)
        if kind == "ref":
            return self.ref(upstream)
        items = [
            self.ref(upstream) if self.draw(st.booleans()) else self.draw(JSON_LITERALS)
            for _ in range(self.draw(st.integers(0, 3)))
        ]
        if kind == "list":
            return items
        keys = self.draw(
            st.lists(st.text(max_size=4), min_size=len(items), max_size=len(items), unique=True)
        )
        return dict(zip(keys, items, strict=True))

    def condition(
        self, upstream: list[str], own: tuple[str, Contract | None] | None = None
    ) -> Condition:
        op = self.draw(st.sampled_from(ConditionOp))
        return Condition(self.ref(upstream, own), op, self.draw(CONDITION_VALUES[op]))

    def gate(self, upstream: list[str], own: tuple[str, Contract | None]) -> ApprovalGate:
        """A gate; an ``after`` gate's condition may read the step's own output."""
        when = self.draw(st.sampled_from(GateWhen))
        readable_own = own if when == GateWhen.AFTER else None
        condition = self.condition(upstream, readable_own) if self.draw(st.booleans()) else None
        return ApprovalGate(when, self.draw(DURATIONS), condition)

    def signal_wait(self, upstream: list[str]) -> SignalWait:
        kind = self.draw(st.sampled_from(["none", "ref", "literal"]))
        correlation: Ref | str | None = None
        if kind == "ref":
            correlation = self.ref(upstream)
        elif kind == "literal":
            correlation = self.draw(st.text(max_size=6) | st.sampled_from(TRICKY_STRINGS))
        name = self.draw(st.text(min_size=1, max_size=8).filter(str.strip))
        return SignalWait(name, correlation, self.draw(DURATIONS))
