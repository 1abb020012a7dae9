"""Trigger rules, pure: parsing with clear errors, field paths, filters, the commands made."""

from __future__ import annotations

import json
import re
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from apex import codec
from apex.client import run_id_for
from apex.config import REPO_ROOT
from apex.domain.commands import SendSignal, StartRun
from apex.triggers import (
    DecodeError,
    EventDecoder,
    ExtractionError,
    Rule,
    RulesError,
    StartRunAction,
    command_id_for,
    load_rules,
    match,
    parse_rules,
    rule_to_dict,
)

EXAMPLE = REPO_ROOT / "examples" / "triggers.yaml"

OPENED = {
    "type": "opened",
    "ticket": {"id": "T-1001", "subject": "Refund", "body": "I was charged twice."},
    "customer": {"id": "C-7"},
}
REPLIED = {"type": "replied", "ticket": {"id": "T-1001"}, "reply": {"text": "Any news?"}}


def one_rule(**rule: Any) -> Rule:
    doc = {"name": "r", "topic": "shop.tickets", **rule}
    return parse_rules({"rules": [doc]}).rules[0]


def start_rule(**start: Any) -> Rule:
    return one_rule(start_run={"definition": "flow", "idempotency_key": "$.id", **start})


def problems_of(doc: Any) -> list[str]:
    with pytest.raises(RulesError) as caught:
        parse_rules(doc if isinstance(doc, str) else {"rules": doc}, source="rules.yaml")
    assert str(caught.value).startswith("rules.yaml: invalid trigger rules")
    return caught.value.problems


# -- the example and the two actions -----------------------------------------------------------


def test_the_example_file_is_valid() -> None:
    rules = load_rules(EXAMPLE)

    assert [r.name for r in rules.rules] == ["ticket-opened", "customer-replied"]
    assert rules.topics == ["shop.tickets"]
    assert rules.decoders["shop.tickets"].format == "json"


def test_a_start_rule_makes_a_start_run_keyed_by_the_business_key() -> None:
    rule = load_rules(EXAMPLE).rules[0]

    [command] = match(rule, OPENED, command_id="c-1", issued_at_ms=1_000)

    assert isinstance(command, StartRun)
    assert command == StartRun(
        command_id="c-1",
        run_id=run_id_for("ticket_triage", "T-1001"),
        issued_at_ms=1_000,
        definition_name="ticket_triage",
        definition_version=1,
        input={
            "ticket_id": "T-1001",
            "subject": "Refund",
            "body": "I was charged twice.",
            "customer": {"id": "C-7"},
        },
        idempotency_key="T-1001",
        jitter_seed=command.jitter_seed,
    )
    assert 0 <= command.jitter_seed < 2**63


def test_a_signal_rule_wakes_the_run_started_with_the_same_key() -> None:
    opened, replied = load_rules(EXAMPLE).rules

    [start] = match(opened, OPENED, command_id="c-1", issued_at_ms=1)
    [signal] = match(replied, REPLIED, command_id="c-2", issued_at_ms=2)

    assert signal == SendSignal(
        command_id="c-2",
        run_id=start.run_id,
        issued_at_ms=2,
        name="customer_reply",
        payload={"text": "Any news?"},
        correlation_key="T-1001",
    )


def test_a_redelivered_event_makes_the_same_command() -> None:
    rule = load_rules(EXAMPLE).rules[0]
    command_id = command_id_for(rule, "shop.tickets", 3, 42)

    first = match(rule, OPENED, command_id=command_id, issued_at_ms=5)
    again = match(rule, json.loads(json.dumps(OPENED)), command_id=command_id, issued_at_ms=5)

    assert first == again
    assert command_id == "trigger:ticket-opened:shop.tickets:3:42"


def test_the_same_business_key_republished_starts_the_same_run() -> None:
    rule = load_rules(EXAMPLE).rules[0]

    [a] = match(rule, OPENED, command_id="at-offset-1", issued_at_ms=1)
    [b] = match(rule, OPENED, command_id="at-offset-9", issued_at_ms=9)

    assert isinstance(a, StartRun) and isinstance(b, StartRun)
    assert a.run_id == b.run_id
    assert a.idempotency_key == b.idempotency_key
    assert a.jitter_seed == b.jitter_seed
    assert a.command_id != b.command_id


def test_different_definitions_get_different_runs_for_one_key() -> None:
    a = start_rule()
    b = one_rule(start_run={"definition": "other", "idempotency_key": "$.id"})

    [ca] = match(a, {"id": "k"}, command_id="x", issued_at_ms=0)
    [cb] = match(b, {"id": "k"}, command_id="x", issued_at_ms=0)

    assert ca.run_id != cb.run_id


def test_commands_made_by_rules_survive_the_codec() -> None:
    opened, replied = load_rules(EXAMPLE).rules
    commands = [
        *match(opened, OPENED, command_id="a", issued_at_ms=1),
        *match(replied, REPLIED, command_id="b", issued_at_ms=2),
    ]

    assert [codec.decode_command(codec.encode_command(c)) for c in commands] == commands


def test_a_start_rule_without_input_starts_with_an_empty_object() -> None:
    [command] = match(start_rule(), {"id": "k"}, command_id="x", issued_at_ms=0)

    assert isinstance(command, StartRun)
    assert command.input == {}
    assert command.definition_version is None


# -- keys --------------------------------------------------------------------------------------


def test_an_integer_key_is_its_decimal_text() -> None:
    [command] = match(start_rule(), {"id": 42}, command_id="x", issued_at_ms=0)

    assert isinstance(command, StartRun)
    assert command.idempotency_key == "42"
    assert command.run_id == run_id_for("flow", "42")


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({}, "$.id is missing: no key 'id' at $"),
        ({"id": None}, "$.id is null"),
        ({"id": ""}, "$.id is an empty string"),
        ({"id": True}, "$.id is a boolean; a key must be a string or an integer"),
        ({"id": {"a": 1}}, "$.id is an object; a key must be a string or an integer"),
        ({"id": 1.5}, "$.id is a number; a key must be a string or an integer"),
    ],
)
def test_a_key_that_cannot_be_taken_names_rule_field_and_reason(
    event: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ExtractionError) as caught:
        match(start_rule(), event, command_id="x", issued_at_ms=0)

    assert str(caught.value) == f"rule 'r', start_run.idempotency_key: {reason}"


def test_a_missing_correlation_names_the_signal_field() -> None:
    rule = load_rules(EXAMPLE).rules[1]

    with pytest.raises(ExtractionError, match=r"'customer-replied', send_signal\.correlation"):
        match(rule, {"type": "replied", "ticket": {}}, command_id="x", issued_at_ms=0)


# -- field paths and templates -----------------------------------------------------------------


def test_paths_reach_into_objects_and_lists() -> None:
    rule = start_rule(
        input={
            "first_tag": "$.tags.0",
            "deep": "$.items.1.sku",
            "whole": "$",
            "literal": "plain text",
            "dollars": "$$5 off",
            "number": 3,
            "list": ["$.tags.1", "x"],
        }
    )
    event = {"id": "k", "tags": ["a", "b"], "items": [{"sku": "s0"}, {"sku": "s1"}]}

    [command] = match(rule, event, command_id="x", issued_at_ms=0)

    assert isinstance(command, StartRun)
    assert command.input == {
        "first_tag": "a",
        "deep": "s1",
        "whole": event,
        "literal": "plain text",
        "dollars": "$5 off",
        "number": 3,
        "list": ["b", "x"],
    }


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"id": "k"}, "$.items.1.sku is missing: no key 'items' at $"),
        ({"id": "k", "items": [{}]}, "$.items.1.sku is missing: no index 1 at $.items (1 items)"),
        ({"id": "k", "items": "no"},
         "$.items.1.sku is missing: $.items is a string, not an object or list"),
        ({"id": "k", "items": [{}, {}]}, "$.items.1.sku is missing: no key 'sku' at $.items.1"),
    ],
)  # fmt: skip
def test_a_missing_input_value_says_where_the_path_broke(
    event: dict[str, Any], reason: str
) -> None:
    rule = start_rule(input={"sku": "$.items.1.sku"})

    with pytest.raises(ExtractionError) as caught:
        match(rule, event, command_id="x", issued_at_ms=0)

    assert str(caught.value) == f"rule 'r', start_run.input.sku: {reason}"


def test_an_optional_path_is_left_out_when_missing() -> None:
    rule = start_rule(input={"customer": "$.customer?", "tags": ["$.tag?"]})

    [without] = match(rule, {"id": "k"}, command_id="x", issued_at_ms=0)
    [with_it] = match(rule, {"id": "k", "customer": 7, "tag": "t"}, command_id="x", issued_at_ms=0)

    assert isinstance(without, StartRun) and isinstance(with_it, StartRun)
    assert without.input == {"tags": [None]}
    assert with_it.input == {"customer": 7, "tags": ["t"]}


def test_a_missing_optional_payload_is_null() -> None:
    rule = one_rule(
        send_signal={"definition": "f", "correlation": "$.id", "signal": "s", "payload": "$.p?"}
    )

    [command] = match(rule, {"id": "k"}, command_id="x", issued_at_ms=0)

    assert isinstance(command, SendSignal)
    assert command.payload is None


# -- filters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "event", "holds"),
    [
        ({"field": "$.type", "equals": "opened"}, {"type": "opened"}, True),
        ({"field": "$.type", "equals": "opened"}, {"type": "closed"}, False),
        ({"field": "$.type", "equals": "opened"}, {}, False),
        ({"field": "$.type", "not_equals": "spam"}, {"type": "opened"}, True),
        ({"field": "$.type", "not_equals": "spam"}, {}, True),
        ({"field": "$.n", "equals": 1}, {"n": 1.0}, True),
        ({"field": "$.n", "equals": 1}, {"n": True}, False),
        ({"field": "$.flag", "equals": True}, {"flag": 1}, False),
        ({"field": "$.flag", "equals": True}, {"flag": True}, True),
        ({"field": "$.tier", "in": ["gold", "silver"]}, {"tier": "gold"}, True),
        ({"field": "$.tier", "in": ["gold", "silver"]}, {}, False),
        ({"field": "$.tier", "not_in": ["gold"]}, {"tier": "bronze"}, True),
        ({"field": "$.a.0", "exists": True}, {"a": [None]}, False),
        ({"field": "$.a.0", "exists": True}, {"a": [0]}, True),
        ({"field": "$.a", "exists": False}, {}, True),
        ([{"field": "$.a", "equals": 1}, {"field": "$.b", "equals": 2}], {"a": 1, "b": 2}, True),
        ([{"field": "$.a", "equals": 1}, {"field": "$.b", "equals": 2}], {"a": 1, "b": 3}, False),
    ],
)
def test_filters(when: Any, event: dict[str, Any], holds: bool) -> None:
    rule = start_rule(idempotency_key="$.key")

    commands = match(
        Rule(rule.name, rule.topic, rule.action, when=one_rule_when(when)),
        {"key": "k", **event},
        command_id="x",
        issued_at_ms=0,
    )

    assert len(commands) == (1 if holds else 0)


def one_rule_when(when: Any) -> Any:
    return one_rule(when=when, start_run={"definition": "f", "idempotency_key": "$.key"}).when


def test_a_filter_that_does_not_hold_skips_extraction() -> None:
    rule = load_rules(EXAMPLE).rules[0]

    assert match(rule, {"type": "closed"}, command_id="x", issued_at_ms=0) == []


# -- parsing errors name the rule and the field ---------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"topic": "t", "start_run": {"definition": "f", "idempotency_key": "$.k"}},
         "rules[0], name: expected a name of letters, digits"),
        ({"name": "r", "start_run": {"definition": "f", "idempotency_key": "$.k"}},
         "rule 'r' (rules[0]), topic: expected a Kafka topic name, got None"),
        ({"name": "r", "topic": "t"},
         "rule 'r' (rules[0]), start_run/send_signal: a rule has exactly one of"),
        ({"name": "r", "topic": "t", "start_run": {"idempotency_key": "$.k"}},
         "rule 'r' (rules[0]), start_run.definition: required"),
        ({"name": "r", "topic": "t", "start_run": {"definition": "f"}},
         "rule 'r' (rules[0]), start_run.idempotency_key: required: a field path like $.order.id"),
        ({"name": "r", "topic": "t", "start_run": {"definition": "f", "idempotency_key": "id"}},
         "rule 'r' (rules[0]), start_run.idempotency_key: expected a field path like $.order.id, "
         "got 'id'"),
        ({"name": "r", "topic": "t", "start_run": {"definition": "f", "idempotency_key": "$.k?"}},
         "rule 'r' (rules[0]), start_run.idempotency_key: '$.k?': a key cannot be optional"),
        ({"name": "r", "topic": "t",
          "start_run": {"definition": "f", "idempotency_key": "$.k", "version": 0}},
         "rule 'r' (rules[0]), start_run.version: expected a version number >= 1, got 0"),
        ({"name": "r", "topic": "t",
          "start_run": {"definition": "f", "idempotency_key": "$.k", "inputs": {}}},
         "rule 'r' (rules[0]), start_run.inputs: unknown field; did you mean 'input'?"),
        ({"name": "r", "topic": "t",
          "start_run": {"definition": "f", "idempotency_key": "$.k", "input": {"a": "$..b"}}},
         "rule 'r' (rules[0]), start_run.input.a: '$..b': a path is '$' then"),
        ({"name": "r", "topic": "t",
          "start_run": {"definition": "f", "idempotency_key": "$.k", "input": {"a": "$5"}}},
         "rule 'r' (rules[0]), start_run.input.a: expected a field path like $.order.id, got '$5'"),
        ({"name": "r", "topic": "t", "send_signal": {"definition": "f", "correlation": "$.k"}},
         "rule 'r' (rules[0]), send_signal.signal: required"),
        ({"name": "r", "topic": "t",
          "send_signal": {"definition": "f", "signal": "s", "correlation": "$.k"},
          "when": {"field": "$.a"}},
         "rule 'r' (rules[0]), when: expected exactly one of equals, not_equals, in, not_in, "
         "exists; got none"),
        ({"name": "r", "topic": "t",
          "send_signal": {"definition": "f", "signal": "s", "correlation": "$.k"},
          "when": [{"field": "$.a", "in": "x"}]},
         "rule 'r' (rules[0]), when[0].in: expected a list, got 'x'"),
        ({"name": "r", "topic": "t",
          "send_signal": {"definition": "f", "signal": "s", "correlation": "$.k"},
          "when": {"field": "type", "equals": 1}},
         "rule 'r' (rules[0]), when.field: expected a field path like $.order.id, got 'type'"),
        ({"name": "r", "topic": "t", "format": "xml",
          "send_signal": {"definition": "f", "signal": "s", "correlation": "$.k"}},
         "rule 'r' (rules[0]), format: expected 'json' or 'avro', got 'xml'"),
        ({"name": "r", "topic": "t", "format": "avro",
          "send_signal": {"definition": "f", "signal": "s", "correlation": "$.k"}},
         "rule 'r' (rules[0]), schema: an Avro rule needs 'schema: path/to/writer.avsc'"),
        ({"name": "r", "topic": "t", "format": "avro", "schema": "nowhere.avsc",
          "send_signal": {"definition": "f", "signal": "s", "correlation": "$.k"}},
         "rule 'r' (rules[0]), schema: no such file"),
        ({"name": "r", "topic": "t", "schema": "x.avsc",
          "send_signal": {"definition": "f", "signal": "s", "correlation": "$.k"}},
         "rule 'r' (rules[0]), schema: only an Avro rule has a schema"),
        ({"name": "r", "topic": "t", "on": "x",
          "send_signal": {"definition": "f", "signal": "s", "correlation": "$.k"}},
         "rule 'r' (rules[0]), on: unknown field"),
    ],
)  # fmt: skip
def test_a_bad_rule_is_refused_naming_rule_and_field(rule: dict[str, Any], problem: str) -> None:
    problems = problems_of([rule])

    assert any(p.startswith(problem) for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        [
            {"name": "a", "topic": "t", "start_run": {"definition": "f"}},
            {"name": "b", "topic": "t", "send_signal": {"definition": "f"}},
        ]
    )

    assert [p.split(":")[0] for p in problems] == [
        "rule 'a' (rules[0]), start_run.idempotency_key",
        "rule 'b' (rules[1]), send_signal.signal",
        "rule 'b' (rules[1]), send_signal.correlation",
    ]


def test_rule_names_are_unique() -> None:
    rule = {"name": "r", "topic": "t", "start_run": {"definition": "f", "idempotency_key": "$.k"}}

    assert problems_of([rule, rule]) == [
        "rule 'r' (rules[1]), name: 'r' is also the name of rules[0]"
    ]


def test_one_topic_has_one_format(tmp_path: Path) -> None:
    schema = tmp_path / "e.avsc"
    schema.write_text(json.dumps(EVENT_SCHEMA))
    signal = {"definition": "f", "signal": "s", "correlation": "$.k"}

    with pytest.raises(RulesError) as caught:
        parse_rules(
            {
                "rules": [
                    {"name": "a", "topic": "t", "send_signal": signal},
                    {"name": "b", "topic": "t", "format": "avro", "schema": "e.avsc",
                     "send_signal": signal},
                ]
            },
            base_dir=tmp_path,
        )  # fmt: skip

    [problem] = caught.value.problems
    assert problem.startswith("rule 'b', format/schema: topic 't' is read as avro (")
    assert problem.endswith("but as json by rule 'a': one topic has one format")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rules: [", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping with a list under 'rules:'"),
        ("rules: []\n", "'rules' is empty"),
        ("rule: []\nrules: [{name: r, topic: t, send_signal: {definition: f, signal: s, "
         "correlation: $.k}}]\n", "unknown top-level key 'rule'; did you mean 'rules'?"),
        ("rules: [3]\n", "rules[0], rule: expected a mapping, got an integer"),
    ],
)  # fmt: skip
def test_a_bad_file_says_what_is_wrong(text: str, problem: str) -> None:
    problems = problems_of(text)

    assert any(p.startswith(problem) for p in problems), problems


def test_rules_shown_as_data_parse_back_to_the_same_rules() -> None:
    rules = load_rules(EXAMPLE)
    extra = start_rule(input={"literal": "$$x", "n": [1, "$.a?"]})
    shown = [rule_to_dict(r) for r in (*rules.rules, extra)]

    again = parse_rules(json.loads(json.dumps({"rules": shown})))

    assert again.rules == (*rules.rules, extra)


def test_a_yaml_file_with_flow_mappings_parses(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "rules:\n"
        "  - name: opened\n"
        "    topic: up.orders\n"
        "    when: {field: $.kind, equals: placed}\n"
        "    start_run: {definition: order, input: {id: $.order.id}, idempotency_key: $.order.id}\n"
    )

    [rule] = load_rules(path).rules

    assert isinstance(rule.action, StartRunAction)
    assert rule.action.input["id"].expression == "$.order.id"


# -- decoding events ----------------------------------------------------------------------------

EVENT_SCHEMA = {
    "type": "record",
    "name": "shop.TicketEvent",
    "fields": [
        {"name": "type", "type": "string"},
        {"name": "ticket_id", "type": "string"},
        {"name": "attachment", "type": "bytes"},
        {"name": "priority", "type": ["null", "int"], "default": None},
    ],
}
AVRO_EVENT = {"type": "opened", "ticket_id": "T-1", "attachment": b"\x00\xff", "priority": 2}


def avro_decoder(tmp_path: Path) -> EventDecoder:
    path = tmp_path / "ticket_event.avsc"
    path.write_text(json.dumps(EVENT_SCHEMA))
    return EventDecoder("avro", path)


def parsed_event_schema() -> dict[str, Any]:
    parsed = parse_schema(EVENT_SCHEMA)
    assert isinstance(parsed, dict)
    return parsed


def avro_body(record: dict[str, Any]) -> bytes:
    buffer = BytesIO()
    schemaless_writer(buffer, parse_schema(EVENT_SCHEMA), record)
    return buffer.getvalue()


def test_json_events_decode() -> None:
    assert EventDecoder("json").decode(b'{"a": [1, "\xc3\xa9"]}') == {"a": [1, "é"]}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b'{"a": NaN}', "not JSON"),
        (None, "the record has no value (a tombstone)"),
    ],
)
def test_bad_json_is_a_decode_error(data: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError, match=re.escape(reason)):
        EventDecoder("json").decode(data)


def test_plain_avro_binary_decodes_to_json_values(tmp_path: Path) -> None:
    decoder = avro_decoder(tmp_path)

    event = decoder.decode(avro_body(AVRO_EVENT))

    assert event == {"type": "opened", "ticket_id": "T-1", "attachment": "AP8=", "priority": 2}


def test_single_object_avro_is_detected_by_its_fingerprint(tmp_path: Path) -> None:
    decoder = avro_decoder(tmp_path)
    fingerprint = codec.parsing_fingerprint(parsed_event_schema()).to_bytes(8, "little")

    event = decoder.decode(codec.MAGIC + fingerprint + avro_body(AVRO_EVENT))

    assert event["ticket_id"] == "T-1"


def test_single_object_avro_of_another_schema_is_refused(tmp_path: Path) -> None:
    decoder = avro_decoder(tmp_path)
    data = codec.MAGIC + (12345).to_bytes(8, "little") + avro_body(AVRO_EVENT)

    with pytest.raises(DecodeError, match="fingerprint 0x0000000000003039, but the rules read"):
        decoder.decode(data)


@pytest.mark.parametrize("data", [b"", b"\x02", avro_body(AVRO_EVENT) + b"\x00"])
def test_truncated_or_padded_avro_is_refused(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(DecodeError, match=r"not Avro of shop\.TicketEvent"):
        avro_decoder(tmp_path).decode(data)


def test_an_avro_rule_loads_its_schema_relative_to_the_rules_file(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "e.avsc").write_text(json.dumps(EVENT_SCHEMA))
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - {name: r, topic: t, format: avro, schema: schemas/e.avsc,\n"
        "     start_run: {definition: f, idempotency_key: $.ticket_id}}\n"
    )

    rules = load_rules(path)
    event = rules.decoders["t"].decode(avro_body(AVRO_EVENT))
    [command] = match(rules.rules[0], event, command_id="x", issued_at_ms=0)

    assert command.run_id == run_id_for("f", "T-1")


def test_an_unparsable_schema_is_a_rules_error(tmp_path: Path) -> None:
    (tmp_path / "bad.avsc").write_text('{"type": "record", "name": "X", "fields": [{"name": 1}]}')

    problems = problems_of(
        "rules:\n"
        "  - {name: r, topic: t, format: avro, schema: " + str(tmp_path / "bad.avsc") + ",\n"
        "     start_run: {definition: f, idempotency_key: $.k}}\n"
    )

    assert problems[0].startswith("rule 'r', schema: cannot load")


# -- apex triggers check ---------------------------------------------------------------------------


def test_check_prints_the_rules_as_json() -> None:
    from typer.testing import CliRunner

    from apex.cli import app

    result = CliRunner().invoke(app, ["triggers", "check", str(EXAMPLE), "--json"])

    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert [r["name"] for r in shown] == ["ticket-opened", "customer-replied"]
    assert shown[1]["send_signal"]["correlation"] == "$.ticket.id"


def test_check_shows_a_table_and_refuses_a_bad_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from apex.cli import app

    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: r, topic: t, start_run: {definition: f}}\n")
    runner = CliRunner()

    good = runner.invoke(app, ["triggers", "check", str(EXAMPLE)])
    refused = runner.invoke(app, ["triggers", "check", str(bad)])

    assert good.exit_code == 0 and "ticket-opened" in good.stdout
    assert refused.exit_code == 1
    assert "start_run.idempotency_key" in refused.output
