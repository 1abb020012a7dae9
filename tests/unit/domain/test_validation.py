"""Validation: one table of every refusal with its exact message, and the clean cases."""

# Tables of exact messages read best one message to a line, however long.
# ruff: noqa: E501

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import pytest
from hypothesis import given
from strategies import CAPABILITIES, workflow_definitions

from apex.domain.definition_format import definition_from_dict
from apex.domain.definitions import WorkflowDefinition
from apex.domain.errors import DefinitionError
from apex.domain.validation import ensure_valid, topological_order, validate


def wf(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "t", "version": 1, "steps": list(steps), **extra}


def step(step_id: str, *depends_on: str, **extra: Any) -> dict[str, Any]:
    deps = {"depends_on": list(depends_on)} if depends_on else {}
    return {"id": step_id, "capability": "work", **deps, **extra}


def problems(data: dict[str, Any], capabilities: Collection[str] | None = None) -> list[str]:
    return [str(p) for p in validate(definition_from_dict(data), capabilities=capabilities)]


TYPED = {"output": {"text": "string", "doc": "object"}}
"""An output contract: 'text' is a string, 'doc' an object."""

# (case, definition, registered capabilities or None, the exact messages)
REFUSALS: list[tuple[str, dict[str, Any], list[str] | None, list[str]]] = [
    # -- the workflow
    (
        "empty name",
        wf(step("a"), name=" "),
        None,
        ["name: must not be empty: give the workflow a name"],
    ),
    ("version below 1", wf(step("a"), version=0), None, ["version: must be 1 or more, got 0"]),
    ("no steps", wf(), None, ["steps: a workflow needs at least one step"]),
    (
        "run timeout",
        wf(step("a"), timeout_ms=0),
        None,
        [
            "timeout_ms: must be a positive number of milliseconds, got 0; leave it out for no run timeout"
        ],
    ),
    (
        "input field with a dot",
        wf(step("a"), input={"a.b": "string"}),
        None,
        [
            "input.a.b: a field name must be non-empty and contain no '.' (references split paths on '.')"
        ],
    ),
    # -- step ids and capabilities
    (
        "bad step id",
        wf(step("1st")),
        None,
        [
            "step '1st': id: '1st' is not a valid step id: use letters, digits, '_' and '-', starting with a letter or '_'"
        ],
    ),
    (
        "step id with a space",
        wf(step("a b")),
        None,
        [
            "step 'a b': id: 'a b' is not a valid step id: use letters, digits, '_' and '-', starting with a letter or '_'"
        ],
    ),
    (
        "duplicate step id",
        wf(step("a"), step("b"), step("a")),
        None,
        [
            "step 'a': id: duplicate step id, declared 2 times (steps[0], steps[2]); make the ids unique"
        ],
    ),
    (
        "empty capability",
        wf({"id": "a", "capability": ""}),
        None,
        ["step 'a': capability: must not be empty: name the agent capability that runs the step"],
    ),
    (
        "unknown capability, close",
        wf({"id": "a", "capability": "clasify"}),
        ["classify", "parse"],
        [
            "step 'a': capability: no agent capability 'clasify' is registered; did you mean 'classify'? (registered: classify, parse)"
        ],
    ),
    (
        "unknown capability, far",
        wf({"id": "a", "capability": "fly"}),
        ["classify", "parse"],
        [
            "step 'a': capability: no agent capability 'fly' is registered (registered: classify, parse)"
        ],
    ),
    # -- the graph
    (
        "unknown dependency",
        wf(step("parse"), step("b", "pars")),
        None,
        ["step 'b': depends_on: unknown step 'pars'; did you mean 'parse'?"],
    ),
    (
        "dependency listed twice",
        wf(step("a"), step("b", "a", "a")),
        None,
        ["step 'b': depends_on: lists 'a' twice"],
    ),
    (
        "self dependency",
        wf(step("a", "a")),
        None,
        [
            "step 'a': depends_on: cycle: a -> a (each step depends on the next); remove one dependency"
        ],
    ),
    (
        "cycle of three",
        wf(step("a", "c"), step("b", "a"), step("c", "b"), step("d", "c")),
        None,
        [
            "step 'a': depends_on: cycle: a -> c -> b -> a (each step depends on the next); remove one dependency"
        ],
    ),
    (
        "two cycles",
        wf(step("a", "b"), step("b", "a"), step("c", "d", "a"), step("d", "c")),
        None,
        [
            "step 'a': depends_on: cycle: a -> b -> a (each step depends on the next); remove one dependency",
            "step 'c': depends_on: cycle: c -> d -> c (each step depends on the next); remove one dependency",
        ],
    ),
    # -- references
    (
        "reference to an unknown step",
        wf(step("a"), step("b", "a", inputs={"x": "$.steps.z.output.y"})),
        None,
        ["step 'b': inputs.x: $.steps.z.output.y reads unknown step 'z'"],
    ),
    (
        "reference to a close unknown step",
        wf(step("parse"), step("b", "parse", inputs={"x": "$.steps.prase.output"})),
        None,
        [
            "step 'b': inputs.x: $.steps.prase.output reads unknown step 'prase'; did you mean 'parse'?"
        ],
    ),
    (
        "reference to a sibling races",
        wf(step("a"), step("b", "a"), step("c", "a", inputs={"x": "$.steps.b.output.y"})),
        None,
        [
            "step 'c': inputs.x: $.steps.b.output.y reads step 'b', which is not upstream of 'c' and may not have run yet: add 'b' to depends_on"
        ],
    ),
    (
        "reference to a downstream step",
        wf(step("a", inputs={"x": "$.steps.b.output"}), step("b", "a")),
        None,
        [
            "step 'a': inputs.x: $.steps.b.output reads step 'b', which is not upstream of 'a' and may not have run yet: add 'b' to depends_on"
        ],
    ),
    (
        "reference to the step's own output",
        wf(step("a", inputs={"x": "$.steps.a.output.y"})),
        None,
        [
            "step 'a': inputs.x: $.steps.a.output.y reads the step's own output, which does not exist before it runs"
        ],
    ),
    (
        "nested reference races",
        wf(step("a"), step("b"), step("c", "a", inputs={"x": [1, {"k": "$.steps.b.output"}]})),
        None,
        [
            "step 'c': inputs.x[1].k: $.steps.b.output reads step 'b', which is not upstream of 'c' and may not have run yet: add 'b' to depends_on"
        ],
    ),
    (
        "undeclared run input field",
        wf(step("a", inputs={"x": "$.input.txt"}), input={"text": "string"}),
        None,
        [
            "step 'a': inputs.x: $.input.txt reads field 'txt', but the run's input contract declares text; did you mean 'text'?"
        ],
    ),
    (
        "inside a scalar run input",
        wf(step("a", inputs={"x": "$.input.text.length"}), input={"text": "string"}),
        None,
        [
            "step 'a': inputs.x: $.input.text.length reads inside field 'text', but the run's input contract declares it a string"
        ],
    ),
    (
        "undeclared output field",
        wf(step("a", **TYPED), step("b", "a", inputs={"x": "$.steps.a.output.summary"})),
        None,
        [
            "step 'b': inputs.x: $.steps.a.output.summary reads field 'summary', but the output contract of step 'a' declares text, doc"
        ],
    ),
    (
        "output contract declares nothing",
        wf(step("a", output={}), step("b", "a", inputs={"x": "$.steps.a.output.y"})),
        None,
        [
            "step 'b': inputs.x: $.steps.a.output.y reads field 'y', but the output contract of step 'a' declares nothing"
        ],
    ),
    (
        "inside a scalar output field",
        wf(step("a", **TYPED), step("b", "a", inputs={"x": "$.steps.a.output.text.first"})),
        None,
        [
            "step 'b': inputs.x: $.steps.a.output.text.first reads inside field 'text', but the output contract of step 'a' declares it a string"
        ],
    ),
    (
        "condition reads a racing step",
        wf(
            step("a"),
            step("b"),
            step("c", "a", condition={"ref": "$.steps.b.output.ok", "op": "truthy"}),
        ),
        None,
        [
            "step 'c': condition.ref: $.steps.b.output.ok reads step 'b', which is not upstream of 'c' and may not have run yet: add 'b' to depends_on"
        ],
    ),
    (
        "before gate reads own output",
        wf(
            step(
                "a",
                approval={
                    "when": "before",
                    "condition": {"ref": "$.steps.a.output.p", "op": "truthy"},
                },
            )
        ),
        None,
        [
            "step 'a': approval.condition.ref: $.steps.a.output.p reads the step's own output, which does not exist before it runs"
        ],
    ),
    (
        "after gate reads undeclared own field",
        wf(
            step(
                "a",
                **TYPED,
                approval={
                    "when": "after",
                    "condition": {"ref": "$.steps.a.output.p", "op": "truthy"},
                },
            )
        ),
        None,
        [
            "step 'a': approval.condition.ref: $.steps.a.output.p reads field 'p', but the output contract of step 'a' declares text, doc"
        ],
    ),
    (
        "signal correlation reads unknown step",
        wf(step("a", wait_for_signal={"name": "paid", "correlation": "$.steps.order.output.id"})),
        None,
        [
            "step 'a': wait_for_signal.correlation: $.steps.order.output.id reads unknown step 'order'"
        ],
    ),
    # -- run outputs and dangling steps
    (
        "output reads an unknown step",
        wf(step("a"), outputs={"r": "$.steps.b.output"}),
        None,
        [
            "outputs.r: $.steps.b.output reads unknown step 'b'",
            "step 'a': dangling step: no run output reads it and no published step depends on it, so its work is thrown away; read it in outputs, set publish: true, or remove it",
        ],
    ),
    (
        "output reads an undeclared field",
        wf(step("a", **TYPED), outputs={"r": "$.steps.a.output.sumary"}),
        None,
        [
            "outputs.r: $.steps.a.output.sumary reads field 'sumary', but the output contract of step 'a' declares text, doc"
        ],
    ),
    (
        "output reads an undeclared input",
        wf(step("a", publish=True), input={"text": "string"}, outputs={"r": "$.input.txt"}),
        None,
        [
            "outputs.r: $.input.txt reads field 'txt', but the run's input contract declares text; did you mean 'text'?"
        ],
    ),
    (
        "dangling branch",
        wf(step("a"), step("b", "a"), step("c", "a"), outputs={"r": "$.steps.b.output"}),
        None,
        [
            "step 'c': dangling step: no run output reads it and no published step depends on it, so its work is thrown away; read it in outputs, set publish: true, or remove it"
        ],
    ),
    # -- retry, timeouts, deadlines
    (
        "no attempt",
        wf(step("a", retry={"max_attempts": 0})),
        None,
        ["step 'a': retry.max_attempts: must be 1 or more (1 means no retry), got 0"],
    ),
    (
        "zero initial backoff",
        wf(step("a", retry={"initial_backoff_ms": 0})),
        None,
        ["step 'a': retry.initial_backoff_ms: must be a positive number of milliseconds, got 0"],
    ),
    (
        "negative max backoff",
        wf(step("a", retry={"max_backoff_ms": -1})),
        None,
        ["step 'a': retry.max_backoff_ms: must be a positive number of milliseconds, got -1"],
    ),
    (
        "max below initial backoff",
        wf(step("a", retry={"initial_backoff_ms": 5000, "max_backoff_ms": 1000})),
        None,
        ["step 'a': retry.max_backoff_ms: must be at least initial_backoff_ms (5000), got 1000"],
    ),
    (
        "shrinking multiplier",
        wf(step("a", retry={"multiplier": 0.5})),
        None,
        ["step 'a': retry.multiplier: must be 1 or more (1 keeps the backoff constant), got 0.5"],
    ),
    (
        "jitter above 1",
        wf(step("a", retry={"jitter": 1.5})),
        None,
        ["step 'a': retry.jitter: must be between 0 and 1 (a fraction of the backoff), got 1.5"],
    ),
    (
        "negative jitter",
        wf(step("a", retry={"jitter": -0.1})),
        None,
        ["step 'a': retry.jitter: must be between 0 and 1 (a fraction of the backoff), got -0.1"],
    ),
    (
        "step timeout",
        wf(step("a", timeout_ms=0)),
        None,
        [
            "step 'a': timeout_ms: must be a positive number of milliseconds, got 0; leave it out for no timeout"
        ],
    ),
    (
        "approval deadline",
        wf(step("a", approval={"when": "before", "deadline_ms": 0})),
        None,
        ["step 'a': approval.deadline_ms: must be a positive number of milliseconds, got 0"],
    ),
    (
        "signal deadline",
        wf(step("a", wait_for_signal={"name": "go", "deadline_ms": -5})),
        None,
        [
            "step 'a': wait_for_signal.deadline_ms: must be a positive number of milliseconds, got -5"
        ],
    ),
    (
        "signal without a name",
        wf(step("a", wait_for_signal={"name": ""})),
        None,
        ["step 'a': wait_for_signal.name: must not be empty: name the signal the step waits for"],
    ),
    # -- conditions
    (
        "comparison without a value",
        wf(step("a", condition={"ref": "$.input.n", "op": "gt"})),
        None,
        ["step 'a': condition.value: op 'gt' needs a value to compare with"],
    ),
    (
        "in without a list",
        wf(step("a", condition={"ref": "$.input.n", "op": "in", "value": "x"})),
        None,
        ["step 'a': condition.value: op 'in' needs a list value, e.g. [a, b]"],
    ),
    (
        "not_in without a value",
        wf(step("a", condition={"ref": "$.input.n", "op": "not_in"})),
        None,
        ["step 'a': condition.value: op 'not_in' needs a list value, e.g. [a, b]"],
    ),
    (
        "truthy with a value",
        wf(step("a", condition={"ref": "$.input.n", "op": "truthy", "value": 1})),
        None,
        ["step 'a': condition.value: op 'truthy' takes no value; remove it"],
    ),
    (
        "gate condition without a value",
        wf(step("a", approval={"when": "before", "condition": {"ref": "$.input.n", "op": "le"}})),
        None,
        ["step 'a': approval.condition.value: op 'le' needs a value to compare with"],
    ),
    # -- contracts
    (
        "output field with a dot",
        wf(step("a", output={"a.b": "string"})),
        None,
        [
            "step 'a': output.a.b: a field name must be non-empty and contain no '.' (references split paths on '.')"
        ],
    ),
]


@pytest.mark.parametrize(
    ("data", "capabilities", "expected"),
    [pytest.param(data, caps, expected, id=case) for case, data, caps, expected in REFUSALS],
)
def test_each_refusal_names_the_step_and_the_reason(
    data: dict[str, Any], capabilities: list[str] | None, expected: list[str]
) -> None:
    assert problems(data, capabilities) == expected


def test_the_refusal_table_has_one_case_per_name() -> None:
    names = [case for case, *_ in REFUSALS]
    assert len(names) == len(set(names))


# -- what is accepted ------------------------------------------------------------------


def test_an_after_gate_may_read_the_steps_own_declared_output() -> None:
    gate = {
        "when": "after",
        "condition": {"ref": "$.steps.a.output.text", "op": "eq", "value": "x"},
    }
    assert problems(wf(step("a", **TYPED, approval=gate))) == []


def test_an_empty_input_contract_lets_references_read_any_input_field() -> None:
    assert problems(wf(step("a", inputs={"x": "$.input.anything.deep"}))) == []


def test_an_undeclared_output_contract_lets_references_read_any_field() -> None:
    data = wf(step("a"), step("b", "a", inputs={"x": "$.steps.a.output.any.path"}))
    assert problems(data) == []


def test_a_transitive_upstream_step_may_be_read() -> None:
    data = wf(step("a"), step("b", "a"), step("c", "b", inputs={"x": "$.steps.a.output"}))
    assert problems(data) == []


def test_without_outputs_no_step_dangles() -> None:
    assert problems(wf(step("a"), step("b", "a"), step("c", "a"))) == []


def test_a_published_step_keeps_its_upstream_from_dangling() -> None:
    data = wf(step("a"), step("b", "a", publish=True), step("c"), outputs={"r": "$.steps.c.output"})
    assert problems(data) == []


def test_capabilities_are_only_checked_against_a_registry() -> None:
    data = wf({"id": "a", "capability": "anything"})
    assert problems(data) == []
    assert problems(data, capabilities=["anything"]) == []


def test_ensure_valid_returns_the_definition_or_raises_every_problem() -> None:
    good = definition_from_dict(wf(step("a")))
    assert ensure_valid(good) is good
    with pytest.raises(DefinitionError) as caught:
        ensure_valid(definition_from_dict(wf(step("a", "x"), version=0)))
    assert [str(p) for p in caught.value.problems] == [
        "version: must be 1 or more, got 0",
        "step 'a': depends_on: unknown step 'x'",
    ]


@given(workflow_definitions(with_signals=True))
def test_random_valid_dags_validate_clean_and_order_dependencies_first(
    defn: WorkflowDefinition,
) -> None:
    assert validate(defn, capabilities=CAPABILITIES) == []
    order = topological_order(defn)
    assert sorted(order) == sorted(step.id for step in defn.steps)
    position = {step_id: i for i, step_id in enumerate(order)}
    for s in defn.steps:
        assert all(position[dep] < position[s.id] for dep in s.depends_on)


# -- topological order -------------------------------------------------------------------


def test_topological_order_breaks_ties_by_declaration_order() -> None:
    data = wf(step("z"), step("y", "x"), step("x"), step("w", "z"), step("v"))
    assert topological_order(definition_from_dict(data)) == ("z", "x", "y", "w", "v")


def test_topological_order_of_a_diamond() -> None:
    data = wf(
        step("join", "left", "right"), step("right", "root"), step("left", "root"), step("root")
    )
    assert topological_order(definition_from_dict(data)) == ("root", "right", "left", "join")


def test_topological_order_refuses_a_cycle() -> None:
    with pytest.raises(DefinitionError, match=r"cycle: a -> b -> a"):
        topological_order(definition_from_dict(wf(step("a", "b"), step("b", "a"))))


def test_a_long_chain_is_validated_without_recursion() -> None:
    count = 5000
    chain = [step("s0")] + [step(f"s{i}", f"s{i - 1}") for i in range(1, count)]
    defn = definition_from_dict(wf(*chain))
    assert validate(defn) == []
    assert topological_order(defn)[-1] == f"s{count - 1}"
