"""Definition files: YAML and JSON on disk, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings

from apex.definition_files import dump_definition, load_definition, parse_definition
from apex.domain.definitions import WorkflowDefinition
from apex.domain.errors import DefinitionError
from apex.domain.validation import topological_order
from tests.unit.domain.strategies import workflow_definitions

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ticket_triage.yaml"
CAPABILITIES = ["parse", "redact-pii", "classify", "summarize", "route"]

MINIMAL_YAML = "name: w\nversion: 1\nsteps:\n  - id: a\n    capability: c\n"


def refusal(path: Path, **kwargs: object) -> str:
    with pytest.raises(DefinitionError) as caught:
        load_definition(path, **kwargs)  # type: ignore[arg-type]
    assert caught.value.source == str(path)
    return str(caught.value)


def test_the_ticket_triage_example_loads_and_validates() -> None:
    defn = load_definition(EXAMPLE, capabilities=CAPABILITIES)
    assert defn.key == "ticket_triage@1"
    assert topological_order(defn) == ("parse", "redact_pii", "classify", "summarize", "route")
    route = defn.step("route")
    assert route.publish
    assert route.approval is not None and route.approval.condition is not None
    assert route.approval.condition.ref.expression == "$.steps.classify.output.priority"


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_a_dumped_definition_loads_back_equal(tmp_path: Path, suffix: str) -> None:
    defn = load_definition(EXAMPLE)
    path = tmp_path / f"triage{suffix}"
    path.write_text(
        dump_definition(defn, "json" if suffix == ".json" else "yaml"), encoding="utf-8"
    )
    assert load_definition(path) == defn


@settings(max_examples=50)
@given(workflow_definitions(with_signals=True))
def test_any_valid_definition_survives_yaml_and_json_text(defn: WorkflowDefinition) -> None:
    assert parse_definition(dump_definition(defn, "yaml"), "yaml") == defn
    assert parse_definition(dump_definition(defn, "json"), "json") == defn


def test_an_unsupported_file_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flow.toml"
    path.write_text("", encoding="utf-8")
    assert refusal(path) == (
        f"{path}: invalid workflow definition (1 problem):\n"
        "  unsupported file type '.toml': use .yaml, .yml or .json"
    )


def test_a_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_definition(tmp_path / "nope.yaml")


def test_a_yaml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: w\nsteps: [a, b\nversion: 1\n", encoding="utf-8")
    message = refusal(path)
    assert message.startswith(f"{path}: invalid workflow definition (1 problem):\n  line 3, column")
    assert "not valid YAML" in message


def test_a_json_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"name": "w",\n "version": 1,,}', encoding="utf-8")
    assert refusal(path) == (
        f"{path}: invalid workflow definition (1 problem):\n"
        "  line 2, column 15: not valid JSON: Expecting property name enclosed in double quotes"
    )


def test_a_key_written_twice_in_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(MINIMAL_YAML + "    capability: d\n", encoding="utf-8")
    assert refusal(path) == (
        f"{path}: invalid workflow definition (1 problem):\n"
        "  line 6, column 5: not valid YAML: key 'capability' appears twice"
    )


def test_a_key_written_twice_in_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.json"
    path.write_text('{"name": "w", "name": "v", "version": 1, "steps": []}', encoding="utf-8")
    assert refusal(path).endswith("not valid JSON: key 'name' appears twice in one object")


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    assert refusal(path).endswith(
        "empty document: a definition is a mapping with name, version and steps"
    )


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert refusal(path).endswith("not UTF-8 text (byte 9); save the file as UTF-8")


def test_format_and_validation_problems_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        MINIMAL_YAML + "    depends_on: [b]\n    retry: {max_attempt: 2}\n", encoding="utf-8"
    )
    assert refusal(path) == (
        f"{path}: invalid workflow definition (1 problem):\n"
        "  step 'a': retry: unknown key 'max_attempt'; did you mean 'max_attempts'?"
    )
    path.write_text(MINIMAL_YAML + "    depends_on: [b]\n", encoding="utf-8")
    assert refusal(path, capabilities=["parse"]) == (
        f"{path}: invalid workflow definition (2 problems):\n"
        "  step 'a': capability: no agent capability 'c' is registered (registered: parse)\n"
        "  step 'a': depends_on: unknown step 'b'"
    )


def test_check_false_reads_the_format_only(tmp_path: Path) -> None:
    path = tmp_path / "unchecked.yml"
    path.write_text(MINIMAL_YAML + "    depends_on: [b]\n", encoding="utf-8")
    assert load_definition(path, check=False).steps[0].depends_on == ("b",)


def test_yaml_scalars_that_look_like_other_types_stay_strings() -> None:
    text = MINIMAL_YAML + "    inputs: {a: 'yes', b: 'null', c: '2024-01-02', d: '$$.x'}\n"
    defn = parse_definition(text, "yaml")
    assert defn.steps[0].inputs == {"a": "yes", "b": "null", "c": "2024-01-02", "d": "$.x"}
    assert parse_definition(dump_definition(defn), "yaml") == defn


def test_an_unquoted_yaml_date_is_refused_with_a_hint() -> None:
    with pytest.raises(
        DefinitionError, match=r"inputs.c: a date \(2024-01-02\) is not a JSON value; quote it"
    ):
        parse_definition(MINIMAL_YAML + "    inputs: {c: 2024-01-02}\n", "yaml")


def test_dump_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown definition format 'toml'"):
        dump_definition(load_definition(EXAMPLE), "toml")  # type: ignore[arg-type]
