"""The typed builder makes the same definitions as the YAML format."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from apex.domain.builder import Retry, Step, Workflow, gate, optional, signal, to_ref, when
from apex.domain.definition_format import definition_from_dict, definition_to_dict
from apex.domain.definitions import FieldSpec, FieldType, Ref, WorkflowDefinition
from apex.domain.errors import DefinitionError

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "ticket_triage.yaml"

TRIAGE_YAML = """
name: triage
version: 1
input: {text: string}
steps:
  - id: parse
    capability: parse
    inputs: {text: $.input.text}
  - id: classify
    capability: classify
    inputs: {doc: $.steps.parse.output.doc}
    depends_on: [parse]
    retry: {max_attempts: 3}
"""


def test_the_builder_and_a_yaml_document_make_equal_definitions() -> None:
    wf = Workflow("triage", version=1, input={"text": "string"})
    parse = wf.step("parse", "parse", inputs={"text": wf.input.text})
    wf.step("classify", "classify", inputs={"doc": parse.output.doc}, retry=Retry(max_attempts=3))
    assert wf.build() == definition_from_dict(yaml.safe_load(TRIAGE_YAML))


def test_the_builder_makes_the_ticket_triage_example() -> None:
    triage = Retry(max_attempts=3, initial_backoff_ms=500, max_backoff_ms=5000, jitter=0.2)
    model = Retry(max_attempts=3, initial_backoff_ms=1000, max_backoff_ms=10000, jitter=0.2)
    wf = Workflow(
        "ticket_triage",
        input={
            "ticket_id": "string",
            "subject": "string",
            "body": "string",
            "customer": optional("object"),
        },
        description=(
            "Parse a support ticket, redact personal data and classify it in parallel, "
            "summarize it, and route it to a queue; a human approves high-priority routes."
        ),
        timeout_ms=86_400_000,
    )
    parse = wf.step(
        "parse",
        "parse",
        inputs={"subject": wf.input.subject, "body": wf.input.body},
        retry=triage,
        timeout_ms=10_000,
        output={"text": "string", "language": "string"},
    )
    redact = wf.step(
        "redact_pii",
        "redact-pii",
        inputs={"text": parse.output.text, "language": parse.output.language},
        retry=triage,
        timeout_ms=10_000,
        output={"text": "string", "redactions": "integer"},
    )
    classify = wf.step(
        "classify",
        "classify",
        inputs={
            "text": parse.output.text,
            "labels": ["billing", "bug", "outage", "account", "other"],
        },
        retry=model,
        timeout_ms=30_000,
        output={"category": "string", "priority": "string", "confidence": "number"},
    )
    summarize = wf.step(
        "summarize",
        "summarize",
        inputs={"text": redact.output.text, "category": classify.output.category},
        retry=model,
        timeout_ms=30_000,
        output={"summary": "string"},
    )
    route = wf.step(
        "route",
        "route",
        inputs={
            "ticket_id": wf.input.ticket_id,
            "category": classify.output.category,
            "priority": classify.output.priority,
            "summary": summarize.output.summary,
        },
        after=[summarize],
        approval=gate(
            "before",
            deadline_ms=14_400_000,
            only_if=when(classify.output.priority, "eq", "high"),
        ),
        timeout_ms=10_000,
        output={"queue": "string", "assignee": optional("string")},
        publish=True,
    )
    wf.output("queue", route.output.queue)
    wf.output("priority", classify.output.priority)
    wf.output("summary", summarize.output.summary)
    built = wf.build(capabilities=["parse", "redact-pii", "classify", "summarize", "route"])
    from_file = definition_from_dict(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")))
    assert built == from_file


def test_depends_on_is_inferred_from_every_reference_in_declaration_order() -> None:
    wf = Workflow("w")
    a = wf.step("a", "c")
    b = wf.step("b", "c")
    c = wf.step("c", "c", after=["a"])
    d = wf.step(
        "d",
        "c",
        inputs={"nested": [{"x": c.output.x}], "lit": "$.not.a.ref"},
        condition=when(b.output.ok, "truthy"),
        approval=gate("after", only_if=when(a.output.n, "gt", 3)),
    )
    e = wf.step("e", "c", wait_for_signal=signal("paid", correlation=d.output.order_id))
    defn = wf.build()
    assert defn.step("c").depends_on == ("a",)
    assert defn.step("d").depends_on == ("a", "b", "c")
    assert defn.step("e").depends_on == ("d",)
    assert defn.step("d").inputs == {
        "nested": [{"x": Ref("steps", ("x",), "c")}],
        "lit": "$.not.a.ref",
    }
    assert e == Step("e", e.output)
    assert definition_from_dict(definition_to_dict(defn)) == defn


def test_short_forms_for_gates_and_signals() -> None:
    wf = Workflow("w")
    wf.step("a", "c", approval="before", wait_for_signal="go")
    step = wf.build().steps[0]
    assert step.approval == gate("before")
    assert step.wait_for_signal == signal("go")


def test_references_go_deeper_by_attribute_or_by_item() -> None:
    wf = Workflow("w")
    a = wf.step("a", "c")
    assert to_ref(a.output.doc.title) == Ref("steps", ("doc", "title"), "a")
    assert to_ref(a.output["odd-name"]["_x"]) == Ref("steps", ("odd-name", "_x"), "a")
    assert to_ref(wf.input) == Ref("input", ())
    assert repr(wf.input.text) == "<reference $.input.text>"
    with pytest.raises(AttributeError):
        _ = a.output._private
    with pytest.raises(TypeError, match=r"without '\.'"):
        _ = a.output["a.b"]
    assert copy.copy(a.output.x) is not None  # dunder lookups are not references


def test_build_refuses_with_every_problem() -> None:
    wf = Workflow("w", version=0)
    a = wf.step("a", "clasify", after=["b"])
    wf.step("b", "parse", inputs={"x": a.output.y})
    with pytest.raises(DefinitionError) as caught:
        wf.build(capabilities=["classify", "parse"])
    assert [str(p) for p in caught.value.problems] == [
        "version: must be 1 or more, got 0",
        "step 'a': capability: no agent capability 'clasify' is registered; "
        "did you mean 'classify'? (registered: classify, parse)",
        "step 'a': depends_on: cycle: a -> b -> a (each step depends on the next); "
        "remove one dependency",
    ]


def test_contract_fields_are_type_names_or_field_specs() -> None:
    wf = Workflow("w", input={"a": "string", "b": FieldType.INTEGER, "c": optional("any")})
    wf.step("s", "c", output={"d": FieldSpec(FieldType.ARRAY, required=False)})
    defn = wf.build()
    assert defn.input == {
        "a": FieldSpec(FieldType.STRING),
        "b": FieldSpec(FieldType.INTEGER),
        "c": FieldSpec(FieldType.ANY, required=False),
    }
    assert defn.steps[0].output == {"d": FieldSpec(FieldType.ARRAY, required=False)}


def test_an_unknown_type_name_is_refused_where_it_is_written() -> None:
    with pytest.raises(
        DefinitionError, match=r"input.text: unknown type 'str'; did you mean 'string'\?"
    ):
        Workflow("w", input={"text": "str"})
    wf = Workflow("w")
    with pytest.raises(DefinitionError, match=r"step 's': output.n: unknown type 'int'"):
        wf.step("s", "c", output={"n": "int"})


def test_a_step_or_a_non_json_value_is_not_an_input() -> None:
    wf = Workflow("w")
    a = wf.step("a", "c")
    with pytest.raises(
        TypeError, match=r"inputs.doc: pass a.output \(or a field of it\), not the step"
    ):
        wf.step("b", "c", inputs={"doc": a})
    with pytest.raises(TypeError, match=r"inputs.when\[0\]: .* is not a JSON value or a reference"):
        wf.step("b", "c", inputs={"when": [object()]})
    with pytest.raises(TypeError, match="a condition compares with a literal"):
        when(a.output.x, "eq", a.output.y)


def test_built_definitions_are_plain_domain_values() -> None:
    wf = Workflow("w", failure_policy="continue", timeout_ms=5)
    wf.step("a", "c", inputs={"t": ("x", 1)})
    defn = wf.build()
    assert isinstance(defn, WorkflowDefinition)
    assert defn.steps[0].inputs == {"t": ["x", 1]}
    assert definition_from_dict(definition_to_dict(defn)) == defn
