"""The dict format of workflow definitions: reading, writing, refusing, and its schema."""

# Tables of exact messages read best one message to a line, however long.
# ruff: noqa: E501

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from strategies import workflow_definitions

from apex.domain.definition_format import (
    FORMAT_KEYS,
    REQUIRED_KEYS,
    definition_from_dict,
    definition_to_dict,
)
from apex.domain.definitions import (
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
from apex.domain.errors import DefinitionError, Problem

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "schemas" / "definition.schema.json"
EXAMPLE_PATH = Path(__file__).resolve().parents[3] / "examples" / "ticket_triage.yaml"


def workflow(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": "w",
        "version": 1,
        "steps": list(steps) or [{"id": "a", "capability": "c"}],
        **extra,
    }


def refusal(data: Any) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        definition_from_dict(data)
    return [str(problem) for problem in caught.value.problems]


# -- reading ---------------------------------------------------------------------------


def test_a_full_step_is_read_into_the_domain_model() -> None:
    data = workflow(
        {
            "id": "parse",
            "capability": "parse",
            "inputs": {"text": "$.input.text"},
            "output": {"doc": "object"},
        },
        {
            "id": "classify",
            "capability": "classify",
            "inputs": {"doc": "$.steps.parse.output.doc", "labels": ["a", "b"]},
            "depends_on": ["parse"],
            "retry": {"max_attempts": 3, "jitter": 0.5},
            "timeout_ms": 5000,
            "condition": {"ref": "$.input.lang", "op": "in", "value": ["en", "fr"]},
            "approval": {"when": "after", "deadline_ms": 60000},
            "wait_for_signal": {"name": "go", "correlation": "$.input.order", "deadline_ms": 1000},
            "output": {"priority": "string", "score": {"type": "number", "required": False}},
            "publish": True,
        },
        input={"text": "string", "lang": {"type": "string", "required": False}, "order": "string"},
        outputs={"priority": "$.steps.classify.output.priority"},
        failure_policy="continue",
        timeout_ms=60000,
        description="d",
    )
    assert definition_from_dict(data) == WorkflowDefinition(
        name="w",
        version=1,
        description="d",
        input={
            "text": FieldSpec(FieldType.STRING),
            "lang": FieldSpec(FieldType.STRING, required=False),
            "order": FieldSpec(FieldType.STRING),
        },
        outputs={"priority": Ref("steps", ("priority",), "classify")},
        failure_policy=FailurePolicy.CONTINUE,
        timeout_ms=60000,
        steps=(
            StepDefinition(
                id="parse",
                capability="parse",
                inputs={"text": Ref("input", ("text",))},
                output={"doc": FieldSpec(FieldType.OBJECT)},
            ),
            StepDefinition(
                id="classify",
                capability="classify",
                inputs={"doc": Ref("steps", ("doc",), "parse"), "labels": ["a", "b"]},
                depends_on=("parse",),
                retry=RetryPolicy(max_attempts=3, jitter=0.5),
                timeout_ms=5000,
                condition=Condition(Ref("input", ("lang",)), ConditionOp.IN, ["en", "fr"]),
                approval=ApprovalGate(GateWhen.AFTER, deadline_ms=60000),
                wait_for_signal=SignalWait("go", Ref("input", ("order",)), 1000),
                output={
                    "priority": FieldSpec(FieldType.STRING),
                    "score": FieldSpec(FieldType.NUMBER, required=False),
                },
                publish=True,
            ),
        ),
    )


@pytest.mark.parametrize(
    ("written", "meaning"),
    [
        ("$.input.x", Ref("input", ("x",))),
        ("$.input", Ref("input", ())),
        ("$.steps.a.output", Ref("steps", (), "a")),
        ("$$.input.x", "$.input.x"),
        ("$$$.x", "$$.x"),
        ("$x", "$x"),
        ("$", "$"),
        ("$$", "$$"),
        ("plain", "plain"),
        (
            ["$.input.x", {"k": "$.steps.a.output.y", "l": "$$.z"}],
            [Ref("input", ("x",)), {"k": Ref("steps", ("y",), "a"), "l": "$.z"}],
        ),
    ],
)
def test_a_dollar_dot_string_is_a_reference_and_a_double_dollar_escapes_it(
    written: Any, meaning: Any
) -> None:
    data = workflow({"id": "a", "capability": "c", "inputs": {"v": written}})
    assert definition_from_dict(data).steps[0].inputs["v"] == meaning


def test_an_optional_key_set_to_null_means_it_is_left_out() -> None:
    nulls = {key: None for key in FORMAT_KEYS["step"] if key not in REQUIRED_KEYS["step"]}
    data = {
        **workflow({"id": "a", "capability": "c", **nulls}),
        "description": None,
        "input": None,
        "outputs": None,
        "failure_policy": None,
        "timeout_ms": None,
    }
    assert definition_from_dict(data) == definition_from_dict(
        workflow({"id": "a", "capability": "c"})
    )


def test_a_tuple_is_read_as_a_list() -> None:
    data = workflow({"id": "a", "capability": "c", "inputs": {"v": (1, "$.input.x")}})
    assert definition_from_dict(data).steps[0].inputs["v"] == [1, Ref("input", ("x",))]


# -- refusing: every structural problem, collected ----------------------------------------

STEP = {"id": "a", "capability": "c"}

REFUSALS = [
    ("not a mapping", ["x"], ["must be a mapping, got a list"]),
    (
        "missing keys",
        {"name": "w"},
        ["missing required key 'version'", "missing required key 'steps'"],
    ),
    ("unknown key, close", workflow(stpes=[]), ["unknown key 'stpes'; did you mean 'steps'?"]),
    (
        "unknown key, not close",
        workflow(colour="red"),
        [
            "unknown key 'colour'; allowed keys: name, version, description, input, outputs, "
            "failure_policy, timeout_ms, steps"
        ],
    ),
    (
        "version is a string",
        workflow(version="1"),
        ["version: must be an integer, got a string ('1')"],
    ),
    (
        "version is a boolean",
        workflow(version=True),
        ["version: must be an integer, got a boolean (true)"],
    ),
    ("name is a number", workflow(name=3), ["name: must be a string, got a number (3)"]),
    (
        "steps is a mapping",
        workflow(steps={"a": STEP}),
        ["steps: must be a list of steps, got a mapping"],
    ),
    (
        "step is a string",
        workflow(steps=["a"]),
        ["steps[0]: must be a mapping, got a string ('a')"],
    ),
    (
        "step without id",
        workflow(STEP, {"capability": "c", "timeout_ms": "5s"}),
        [
            "steps[1]: missing required key 'id'",
            "steps[1].timeout_ms: must be an integer, got a string ('5s')",
        ],
    ),
    (
        "step id is a number",
        workflow({"id": 7, "capability": "c"}),
        ["steps[0].id: must be a string, got a number (7)"],
    ),
    (
        "unknown step key",
        workflow({**STEP, "depends_of": []}),
        ["step 'a': unknown key 'depends_of'; did you mean 'depends_on'?"],
    ),
    (
        "depends_on is a string",
        workflow({**STEP, "depends_on": "b"}),
        ["step 'a': depends_on: must be a list of step ids; write [b]"],
    ),
    (
        "depends_on item",
        workflow({**STEP, "depends_on": ["b", 2]}),
        ["step 'a': depends_on[1]: must be a string, got a number (2)"],
    ),
    (
        "retry key",
        workflow({**STEP, "retry": {"max_attempt": 3}}),
        ["step 'a': retry: unknown key 'max_attempt'; did you mean 'max_attempts'?"],
    ),
    (
        "retry float attempts",
        workflow({**STEP, "retry": {"max_attempts": 2.5}}),
        ["step 'a': retry.max_attempts: must be an integer, got a number (2.5)"],
    ),
    (
        "multiplier infinite",
        workflow({**STEP, "retry": {"multiplier": float("inf")}}),
        ["step 'a': retry.multiplier: must be a finite number, got a number (inf)"],
    ),
    (
        "publish is a string",
        workflow({**STEP, "publish": "yes"}),
        ["step 'a': publish: must be true or false, got a string ('yes')"],
    ),
    (
        "bad reference in inputs",
        workflow({**STEP, "inputs": {"t": "$.inputs.t"}}),
        [
            "step 'a': inputs.t: '$.inputs.t': a reference reads '$.input...' or '$.steps.<step id>.output...'; "
            "to mean the literal string, write '$$.inputs.t'"
        ],
    ),
    (
        "bad nested reference",
        workflow({**STEP, "inputs": {"t": [1, {"x": "$.steps.b.out"}]}}),
        [
            "step 'a': inputs.t[1].x: '$.steps.b.out': a step reference reads "
            "'$.steps.<step id>.output[.field...]'; to mean the literal string, write '$$.steps.b.out'"
        ],
    ),
    (
        "a date is not JSON",
        workflow({**STEP, "inputs": {"d": datetime.date(2024, 1, 2)}}),
        [
            "step 'a': inputs.d: a date (2024-01-02) is not a JSON value; quote it to pass it as a string"
        ],
    ),
    (
        "NaN is not JSON",
        workflow({**STEP, "inputs": {"n": float("nan")}}),
        ["step 'a': inputs.n: nan is not representable in JSON; use a finite number"],
    ),
    (
        "non-string key",
        workflow({**STEP, "inputs": {1: "x"}}),
        ["step 'a': inputs: keys must be strings, got 1"],
    ),
    (
        "op typo",
        workflow({**STEP, "condition": {"ref": "$.input.x", "op": "equals"}}),
        [
            "step 'a': condition.op: must be one of eq, ne, in, not_in, gt, ge, lt, le, truthy, falsy, exists; got 'equals'"
        ],
    ),
    (
        "condition without op",
        workflow({**STEP, "condition": {"ref": "$.input.x"}}),
        ["step 'a': condition: missing required key 'op'"],
    ),
    (
        "condition ref literal",
        workflow({**STEP, "condition": {"ref": "x", "op": "truthy"}}),
        [
            "step 'a': condition.ref: must be a reference like '$.input.<field>' or '$.steps.<step id>.output.<field>', got 'x'"
        ],
    ),
    (
        "condition value is a reference",
        workflow({**STEP, "condition": {"ref": "$.input.x", "op": "eq", "value": "$.input.y"}}),
        [
            "step 'a': condition.value: '$.input.y' is a reference, but only literals go here; "
            "to mean the literal string, write '$$.input.y'"
        ],
    ),
    (
        "gate when typo",
        workflow({**STEP, "approval": {"when": "befor"}}),
        [
            "step 'a': approval.when: must be one of before, after; got 'befor'; did you mean 'before'?"
        ],
    ),
    (
        "gate without when",
        workflow({**STEP, "approval": {"deadline_ms": 5}}),
        ["step 'a': approval: missing required key 'when'"],
    ),
    (
        "signal correlation number",
        workflow({**STEP, "wait_for_signal": {"name": "s", "correlation": 5}}),
        [
            "step 'a': wait_for_signal.correlation: must be a reference or a literal string, got a number (5)"
        ],
    ),
    (
        "signal without name",
        workflow({**STEP, "wait_for_signal": {}}),
        ["step 'a': wait_for_signal: missing required key 'name'"],
    ),
    (
        "unknown type",
        workflow(input={"t": "uuid"}),
        [
            "input.t: must be one of string, integer, number, boolean, object, array, any; got 'uuid'"
        ],
    ),
    (
        "type close typo",
        workflow(input={"t": "strng"}),
        [
            "input.t: must be one of string, integer, number, boolean, object, array, any; got 'strng'; did you mean 'string'?"
        ],
    ),
    (
        "field spec list",
        workflow(input={"t": ["string"]}),
        [
            "input.t: must be a type (string, integer, number, boolean, object, array, any) or {type, required}, got a list"
        ],
    ),
    (
        "field spec key",
        workflow(input={"t": {"type": "string", "optional": True}}),
        ["input.t: unknown key 'optional'; allowed keys: type, required"],
    ),
    (
        "output contract list",
        workflow({**STEP, "output": ["a"]}),
        ["step 'a': output: must be a mapping of field names to types, got a list"],
    ),
    (
        "outputs literal",
        workflow(outputs={"x": "hello"}),
        [
            "outputs.x: must be a reference like '$.input.<field>' or '$.steps.<step id>.output.<field>', got 'hello'"
        ],
    ),
    (
        "failure policy",
        workflow(failure_policy="fail-fast"),
        [
            "failure_policy: must be one of fail_fast, continue; got 'fail-fast'; did you mean 'fail_fast'?"
        ],
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"), [pytest.param(d, e, id=name) for name, d, e in REFUSALS]
)
def test_a_structural_problem_is_refused_with_where_and_why(data: Any, expected: list[str]) -> None:
    assert refusal(data) == expected


def test_every_structural_problem_is_collected_not_only_the_first() -> None:
    data = workflow(
        {"id": "a", "capability": 1, "retry": {"max_attempts": "3", "jiter": 0}},
        {"capability": "c"},
        version="one",
    )
    assert refusal(data) == [
        "version: must be an integer, got a string ('one')",
        "step 'a': capability: must be a string, got a number (1)",
        "step 'a': retry: unknown key 'jiter'; did you mean 'jitter'?",
        "step 'a': retry.max_attempts: must be an integer, got a string ('3')",
        "steps[1]: missing required key 'id'",
    ]


def test_a_definition_error_lists_each_problem_on_its_own_line() -> None:
    error = DefinitionError(
        [Problem("a", "retry.jitter", "too big"), Problem(None, "name", "empty")]
    )
    assert (
        str(error)
        == "invalid workflow definition (2 problems):\n  step 'a': retry.jitter: too big\n  name: empty"
    )
    assert str(error.with_source("f.yaml")).startswith(
        "f.yaml: invalid workflow definition (2 problems):"
    )
    assert isinstance(error, ValueError)
    assert str(Problem("a", "", "dangling")) == "step 'a': dangling"


# -- writing and round trips ---------------------------------------------------------------


def test_the_canonical_form_leaves_defaults_out_and_escapes_dollar_literals() -> None:
    defn = WorkflowDefinition(
        name="w",
        version=2,
        steps=(
            StepDefinition(
                id="a",
                capability="c",
                inputs={
                    "lit": "$.not.a.ref",
                    "ref": Ref("input", ("x",)),
                    "deep": [{"r": Ref("steps", (), "b")}],
                },
                retry=RetryPolicy(max_attempts=4),
                output={"o": FieldSpec(FieldType.ARRAY, required=False)},
            ),
        ),
    )
    assert definition_to_dict(defn) == {
        "name": "w",
        "version": 2,
        "steps": [
            {
                "id": "a",
                "capability": "c",
                "inputs": {
                    "lit": "$$.not.a.ref",
                    "ref": "$.input.x",
                    "deep": [{"r": "$.steps.b.output"}],
                },
                "retry": {"max_attempts": 4},
                "output": {"o": {"type": "array", "required": False}},
            }
        ],
    }


@given(workflow_definitions(with_signals=True))
def test_definition_round_trips_exactly_through_its_canonical_json_form(
    defn: WorkflowDefinition,
) -> None:
    data = definition_to_dict(defn)
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert definition_from_dict(data) == defn
    assert definition_to_dict(definition_from_dict(data)) == data


# -- the JSON Schema for editors ---------------------------------------------------------------


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


def test_the_json_schema_is_draft_2020_12_json() -> None:
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("section", sorted(FORMAT_KEYS))
def test_the_json_schema_lists_exactly_the_keys_the_reader_accepts(section: str) -> None:
    definition = schema()["$defs"][section]
    assert set(definition["properties"]) == set(FORMAT_KEYS[section])
    assert set(definition.get("required", [])) == set(REQUIRED_KEYS[section])
    assert definition["additionalProperties"] is False


def test_the_json_schema_lists_exactly_the_enum_values_of_the_model() -> None:
    defs = schema()["$defs"]
    assert defs["type"]["enum"] == [t.value for t in FieldType]
    assert defs["condition"]["properties"]["op"]["enum"] == [op.value for op in ConditionOp]
    assert defs["approval"]["properties"]["when"]["enum"] == [w.value for w in GateWhen]
    assert defs["workflow"]["properties"]["failure_policy"]["enum"] == [
        *(p.value for p in FailurePolicy),
        None,
    ]


def test_the_json_schema_is_valid_and_accepts_the_example() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    yaml = pytest.importorskip("yaml")
    jsonschema.Draft202012Validator.check_schema(schema())
    jsonschema.validate(yaml.safe_load(EXAMPLE_PATH.read_text()), schema())


@settings(deadline=None)  # the first call builds the schema validator
@given(workflow_definitions(with_signals=True))
def test_the_json_schema_accepts_every_valid_definition(defn: WorkflowDefinition) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(definition_to_dict(defn), schema())
