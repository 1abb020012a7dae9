"""The Avro codec: round trips, the wire format, errors, and schema resolution.

Compatibility between schema versions is in ``test_schema_compatibility.py``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import sys
import typing
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apex import codec
from apex.codec import CodecError
from apex.domain.commands import COMMAND_TYPES, Command, ReportTaskFailed, StartRun
from apex.domain.definition_format import definition_from_dict, definition_to_dict
from apex.domain.definitions import (
    GateWhen,
    StepDefinition,
    WorkflowDefinition,
)
from apex.domain.events import EVENT_TYPES, Event, RunStarted, StepSucceeded
from apex.domain.messages import RunResult, StepResult, TaskDispatch
from apex.jsonvalue import dumps_canonical, loads

# The domain's definition strategies live next to the domain tests (no packages
# under tests/); pytest's default import mode puts that folder on sys.path the
# same way when it collects them.
sys.path.insert(0, str(Path(__file__).parent / "domain"))
from strategies import workflow_definitions

MESSAGE_TYPES: tuple[type, ...] = (
    *COMMAND_TYPES,
    *EVENT_TYPES,
    TaskDispatch,
    RunResult,
    StepResult,
)

ENCODE: dict[type, Callable[[Any], bytes]] = {
    **{t: codec.encode_command for t in COMMAND_TYPES},
    **{t: codec.encode_event for t in EVENT_TYPES},
    TaskDispatch: codec.encode_dispatch,
    RunResult: codec.encode_run_result,
    StepResult: codec.encode_step_result,
}
DECODE: dict[type, Callable[[bytes], Any]] = {
    **{t: codec.decode_command for t in COMMAND_TYPES},
    **{t: codec.decode_event for t in EVENT_TYPES},
    TaskDispatch: codec.decode_dispatch,
    RunResult: codec.decode_result,
    StepResult: codec.decode_result,
}

INT64 = st.integers(-(2**63), 2**63 - 1)


# -- strategies ------------------------------------------------------------------------------------


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value: what inputs, outputs and payloads may hold."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),  # JSON has no size limit, and neither has Python
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=10,
    )


RICH_DEFINITION = definition_from_dict(
    {
        "name": "ticket_triage",
        "version": 3,
        "description": "Triage — with every feature",
        "input": {"text": "string", "customer": {"type": "object", "required": False}},
        "outputs": {"queue": "$.steps.route.output.queue"},
        "failure_policy": "continue",
        "timeout_ms": 3_600_000,
        "steps": [
            {
                "id": "parse",
                "capability": "parse",
                "inputs": {"text": "$.input.text", "labels": ["bug", "$$.literal", 1.5, None]},
                "retry": {"max_attempts": 3, "multiplier": 1.5, "jitter": 0.1},
                "timeout_ms": 30_000,
                "output": {"doc": "object", "lang": "string"},
            },
            {
                "id": "route",
                "capability": "route",
                "depends_on": ["parse"],
                "inputs": {"doc": "$.steps.parse.output.doc"},
                "condition": {"ref": "$.steps.parse.output.lang", "op": "eq", "value": "en"},
                "approval": {"when": "after", "deadline_ms": 86_400_000},
                "wait_for_signal": {"name": "paid", "correlation": "$.input.customer"},
                "output": {"queue": "string"},
                "publish": True,
            },
        ],
    }
)
SIMPLE_DEFINITION = WorkflowDefinition(
    name="triage", version=2, steps=(StepDefinition(id="parse", capability="parse"),)
)


def definitions() -> st.SearchStrategy[WorkflowDefinition]:
    """Random valid definitions (slow to draw: used by the definition tests)."""
    strategy: st.SearchStrategy[WorkflowDefinition] = workflow_definitions(
        max_steps=4, with_signals=True
    )
    return strategy


def fixed_definitions() -> st.SearchStrategy[WorkflowDefinition]:
    """For the messages that carry one; ``definitions()`` covers the variety."""
    return st.sampled_from([SIMPLE_DEFINITION, RICH_DEFINITION])


_BY_NAME: dict[str, st.SearchStrategy[Any]] = {
    "seq": st.integers(0, 10**9),
    "attempt": st.integers(1, 50),
    "failed_attempt": st.integers(1, 50),
    "next_attempt": st.integers(2, 51),
    "jitter_seed": INT64,  # drawn from the full long range on purpose
    "definition_version": st.none() | st.integers(1, 1000),
    "purpose": st.sampled_from(
        ["retry", "step_timeout", "approval_deadline", "signal_deadline", "run_timeout"]
    ),
    "command_type": st.sampled_from([t.__name__ for t in COMMAND_TYPES]),
}
_BY_TYPE_AND_NAME: dict[tuple[type, str], st.SearchStrategy[Any]] = {
    (RunResult, "status"): st.sampled_from(["completed", "failed", "cancelled"]),
    (StepResult, "status"): st.sampled_from(["succeeded", "failed", "timed_out", "cancelled"]),
}


def messages(message_type: type) -> st.SearchStrategy[Any]:
    """Instances of a command, event or message dataclass, field by field."""
    hints = typing.get_type_hints(message_type)
    return st.builds(
        message_type,
        **{
            f.name: _field_values(message_type, f.name, hints[f.name])
            for f in dataclasses.fields(message_type)
        },
    )


def _field_values(message_type: type, name: str, hint: Any) -> st.SearchStrategy[Any]:
    if (message_type, name) in _BY_TYPE_AND_NAME:
        return _BY_TYPE_AND_NAME[message_type, name]
    if name in _BY_NAME:
        return _BY_NAME[name]
    if name.endswith("_ms"):
        values: st.SearchStrategy[Any] = st.integers(0, 2**53)
        return st.none() | values if type(None) in typing.get_args(hint) else values
    if hint is Any:
        return json_values()
    if hint is WorkflowDefinition:
        return fixed_definitions()
    if hint == WorkflowDefinition | None:
        return st.none() | fixed_definitions()
    if hint is GateWhen:
        return st.sampled_from(GateWhen)
    if hint is str:
        return st.text(max_size=40)
    if hint == str | None:
        return st.none() | st.text(max_size=40)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return INT64
    raise AssertionError(f"no strategy for {message_type.__name__}.{name}: {hint}")


# -- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_type_round_trips(message_type: type, data: st.DataObject) -> None:
    message = data.draw(messages(message_type))
    encoded = ENCODE[message_type](message)
    decoded = DECODE[message_type](encoded)
    assert decoded == message
    assert type(decoded) is message_type
    assert ENCODE[message_type](decoded) == encoded, "encoding is canonical"
    assert DECODE[message_type](memoryview(encoded)) == message, "any bytes-like object"
    # The codec's compiled writer and reader (not a fallback) give what fastavro gives.
    assert _compiled_write(message) == encoded == _fastavro_encode(message)
    assert _compiled_read(message_type, encoded) == _fastavro_decode(message_type, encoded)


class _Level(IntEnum):
    HIGH = 3


class _OddStr(str):
    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"odd"


ODD_VALUES = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        -1,
        1.0,
        1.5,
        -2.5,
        1e30,
        2**63,
        -(2**63) - 1,
        2**63 - 1,
        -(2**63),
        "",
        "after",
        "\ud800",
        b"bytes",
        _Level.HIGH,
        _OddStr("x"),
        GateWhen.AFTER,
        [],
        {"a": math.nan},
        object(),
    ]
)


@pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_writer_never_disagrees_with_fastavro_on_odd_values(
    message_type: type, data: st.DataObject
) -> None:
    """The compiled writer may refuse a value (fastavro then decides), never write other bytes."""
    message = data.draw(messages(message_type))
    name = data.draw(st.sampled_from([f.name for f in dataclasses.fields(message_type)]))
    odd = dataclasses.replace(message, **{name: data.draw(ODD_VALUES)})
    write = codec._REGISTRY.encoders[message_type].write
    assert write is not None
    try:
        written: bytes | None = write(odd)
    except Exception:
        written = None
    if written is not None:
        assert written == _fastavro_encode(odd)
    try:
        expected: Any = _fastavro_encode(odd)
    except Exception:
        expected = CodecError
    if expected is CodecError:
        with pytest.raises(CodecError):
            ENCODE[message_type](odd)
    else:
        assert ENCODE[message_type](odd) == expected


@pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_reader_never_disagrees_with_fastavro_on_damaged_bytes(
    message_type: type, data: st.DataObject
) -> None:
    """The compiled reader may refuse bytes (fastavro then decides), never read another value."""
    encoded = bytearray(ENCODE[message_type](data.draw(messages(message_type))))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(codec.HEADER_SIZE, len(encoded)))
        damage = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if damage == "flip" and at < len(encoded):
            encoded[at] = data.draw(st.integers(0, 255))
        elif damage == "insert":
            encoded[at:at] = data.draw(st.binary(min_size=1, max_size=10))
        elif at < len(encoded):
            del encoded[at]
    damaged = bytes(encoded)
    try:
        expected: Any = _fastavro_decode(message_type, damaged)
    except Exception:
        expected = CodecError
    compiled_read = _current_decoder(message_type).read
    assert compiled_read is not None
    try:
        read = compiled_read(damaged)
    except Exception:
        read = CodecError
    if read is not CodecError:
        assert read == expected
    if expected is CodecError:
        with pytest.raises(CodecError):
            DECODE[message_type](damaged)
    else:
        assert DECODE[message_type](damaged) == expected


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definition=definitions())
@example(definition=RICH_DEFINITION)
def test_definition_round_trips(definition: WorkflowDefinition) -> None:
    encoded = codec.encode_definition(definition)
    assert codec.decode_definition(encoded) == definition
    assert codec.encode_definition(codec.decode_definition(encoded)) == encoded


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definition=definitions())
@example(definition=RICH_DEFINITION)
def test_run_started_carries_the_definition_as_canonical_json(
    definition: WorkflowDefinition,
) -> None:
    event = RunStarted(
        run_id="r",
        seq=1,
        causation_id="c",
        correlation_id="",
        occurred_at_ms=1,
        definition=definition,
        input={"b": 1, "a": [1, 2]},
        idempotency_key="k",
        jitter_seed=7,
    )
    data = codec.encode_event(event)
    record = _raw_body(data, RunStarted)
    assert record["definition"] == dumps_canonical(definition_to_dict(definition))
    assert record["input"] == '{"a":[1,2],"b":1}'


def test_start_run_without_a_definition_carries_null() -> None:
    command = StartRun(command_id="c", run_id="r", issued_at_ms=1, definition_name="triage")
    data = codec.encode_command(command)
    assert _raw_body(data, StartRun)["definition"] is None
    assert codec.decode_command(data) == command


def test_result_topic_tells_the_two_result_types_apart() -> None:
    run = RunResult(
        run_id="r",
        definition="d@1",
        status="completed",
        outputs={"x": 1},
        error=None,
        started_at_ms=1,
        finished_at_ms=2,
        correlation_id="c",
    )
    step = StepResult(
        run_id="r",
        definition="d@1",
        step_id="s",
        attempt=1,
        status="succeeded",
        output=None,
        error=None,
        finished_at_ms=2,
        correlation_id="c",
    )
    assert codec.decode_result(codec.encode_run_result(run)) == run
    assert codec.decode_result(codec.encode_step_result(step)) == step


# -- canonical JSON --------------------------------------------------------------------------------


@given(value=json_values())
def test_canonical_json_is_sorted_compact_utf8_and_round_trips(value: Any) -> None:
    text = dumps_canonical(value)
    assert text == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert loads(text) == value


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, {"a": [-math.inf]}, object(), {1: 1, "a": 2}]
)
def test_canonical_json_refuses_what_is_not_json(value: Any) -> None:
    with pytest.raises(ValueError):
        dumps_canonical(value)


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a":-Infinity}', "", "{", '{"a":1}x'])
def test_json_reader_refuses_what_is_not_json(text: str) -> None:
    with pytest.raises(ValueError):
        loads(text)


def test_json_reader_accepts_whitespace_around_a_value() -> None:
    assert loads(' {"a": [1, 2]}\n') == {"a": [1, 2]}


# -- the wire format -------------------------------------------------------------------------------


def crc64_avro(data: bytes) -> int:
    """The Rabin CRC-64 of the Avro spec ("Schema Fingerprints"), written out here."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_reference_crc64_matches_the_spec_test_vector() -> None:
    # Apache Avro's fingerprint test data: "null" -> 7195948357588979594.
    assert crc64_avro(b'"null"') == 7195948357588979594


@pytest.mark.parametrize(
    "message_type", (*MESSAGE_TYPES, WorkflowDefinition), ids=lambda t: t.__name__
)
def test_header_is_magic_then_little_endian_crc64_of_the_canonical_form(message_type: type) -> None:
    data = _encode_example(message_type)
    # Independent of fastavro: the avro package's canonical form and fingerprint.
    schema = avro.schema.parse(json.dumps(_plain(codec.schema_of(message_type))))
    expected = crc64_avro(schema.canonical_form.encode())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == expected.to_bytes(8, "little")
    assert data[2:10] == schema.fingerprint("CRC-64-AVRO")
    assert codec.fingerprint_of(message_type) == expected
    assert codec.schema_name_of(data) == f"apex.{_schema_stem(message_type)}"


def test_body_after_the_header_is_plain_avro_binary() -> None:
    event = _example(StepSucceeded)
    data = codec.encode_event(event)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, codec.schema_of(StepSucceeded), _raw_body(data, StepSucceeded))
    assert data[10:] == body.getvalue()


# -- errors ----------------------------------------------------------------------------------------


def test_bad_magic_is_a_codec_error() -> None:
    data = bytearray(codec.encode_event(_example(StepSucceeded)))
    data[0] = 0x00
    with pytest.raises(CodecError, match="not an Avro single-object message: starts with 0001"):
        codec.decode_event(bytes(data))


@pytest.mark.parametrize("data", [b"", b"\xc3", b"{}", b'{"run_id": "r"}'])
def test_bytes_without_a_header_are_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError, match=r"single-object|truncated header"):
        codec.decode_event(data)


def test_truncated_header_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="truncated header: 5 bytes") as caught:
        codec.decode_event(b"\xc3\x01\x01\x02\x03")
    assert caught.value.offset == 5


def test_unknown_fingerprint_is_a_codec_error_naming_it() -> None:
    data = b"\xc3\x01" + (0x0123456789ABCDEF).to_bytes(8, "little") + b"\x00"
    with pytest.raises(CodecError, match="unknown schema fingerprint 0x0123456789abcdef") as caught:
        codec.decode_event(data)
    assert caught.value.fingerprint == 0x0123456789ABCDEF
    assert codec.schema_name_of(data) is None


def test_a_message_of_another_kind_is_a_codec_error_naming_what_it_is() -> None:
    data = codec.encode_event(_example(StepSucceeded))
    with pytest.raises(CodecError, match=r"is apex\.StepSucceeded, an event, not a command"):
        codec.decode_command(data)


@pytest.mark.parametrize("message_type", [StepSucceeded, RunStarted, StartRun, TaskDispatch])
def test_every_truncation_of_a_message_is_a_codec_error(message_type: type) -> None:
    data = ENCODE[message_type](_example(message_type))
    for size in range(len(data)):
        with pytest.raises(CodecError):
            DECODE[message_type](data[:size])


def test_truncated_body_names_the_schema_and_offset() -> None:
    data = codec.encode_event(_example(StepSucceeded))
    with pytest.raises(CodecError, match=r"corrupt or truncated apex\.StepSucceeded body") as err:
        codec.decode_event(data[:-3])
    assert err.value.schema == "apex.StepSucceeded"
    assert err.value.fingerprint == codec.fingerprint_of(StepSucceeded)


def test_trailing_bytes_are_a_codec_error() -> None:
    data = codec.encode_event(_example(StepSucceeded)) + b"\x00"
    with pytest.raises(CodecError, match=r"1 unexpected bytes after the apex\.StepSucceeded body"):
        codec.decode_event(data)


@pytest.mark.parametrize("message_type", [StepSucceeded, RunStarted, ReportTaskFailed])
@given(garbage=st.binary(max_size=64))
@example(garbage=b"\xff" * 16)
@example(garbage=b"\x80" * 12)
def test_garbage_body_decodes_or_raises_codec_error_only(
    message_type: type, garbage: bytes
) -> None:
    header = b"\xc3\x01" + codec.fingerprint_of(message_type).to_bytes(8, "little")
    try:
        decoded = DECODE[message_type](header + garbage)
    except CodecError:
        return
    assert type(decoded) is message_type


def test_body_that_does_not_map_to_the_domain_is_a_codec_error() -> None:
    record = _raw_body(codec.encode_event(_example(StepSucceeded)), StepSucceeded)
    record["output"] = "{not json"
    with pytest.raises(CodecError, match="does not map to a domain object"):
        codec.decode_event(_write_raw(StepSucceeded, record))


def test_run_started_with_an_invalid_definition_is_a_codec_error() -> None:
    record = _raw_body(codec.encode_event(_example(RunStarted)), RunStarted)
    record["definition"] = '{"name":"x"}'
    with pytest.raises(CodecError, match=r"apex\.RunStarted body does not map .*DefinitionError"):
        codec.decode_event(_write_raw(RunStarted, record))


def test_definition_whose_key_disagrees_with_its_body_is_a_codec_error() -> None:
    definition = _example_definition()
    record = {
        "name": "other",
        "version": 9,
        "definition": dumps_canonical(definition_to_dict(definition)),
    }
    with pytest.raises(CodecError, match="the record says other@9 but its definition is"):
        codec.decode_definition(_write_raw(WorkflowDefinition, record))


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)


def test_a_value_that_is_not_json_cannot_be_encoded() -> None:
    event = dataclasses.replace(_example(StepSucceeded), output={"x": math.nan})
    with pytest.raises(CodecError, match=r"cannot encode StepSucceeded as apex\.StepSucceeded"):
        codec.encode_event(event)


_VARINT_EDGES = sorted(
    {
        value
        for bits in range(0, 64, 7)
        for value in (v * sign for v in ((1 << bits) - 1, 1 << bits, (1 << bits) + 1)
                      for sign in (1, -1))
        if -(1 << 63) <= value < 1 << 63
    }
    | {-(1 << 63), (1 << 63) - 1, 1_763_740_800_000}
)  # fmt: skip


@pytest.mark.parametrize("value", _VARINT_EDGES)
def test_compiled_long_is_the_varint_fastavro_writes_and_reads(value: int) -> None:
    """Every length of varint (each 7-bit boundary, both signs) as fastavro writes and reads it."""
    event = dataclasses.replace(_example(StepSucceeded), occurred_at_ms=value)
    encoded = _compiled_write(event)
    assert encoded == _fastavro_encode(event)
    assert (
        _compiled_read(StepSucceeded, encoded) == event == _fastavro_decode(StepSucceeded, encoded)
    )


def test_a_long_out_of_range_cannot_be_encoded() -> None:
    event = dataclasses.replace(_example(StepSucceeded), seq=2**63)
    with pytest.raises(CodecError, match="cannot encode StepSucceeded"):
        codec.encode_event(event)


def test_encoding_a_message_as_the_wrong_kind_is_a_codec_error() -> None:
    event: Any = _example(StepSucceeded)
    with pytest.raises(CodecError, match="cannot encode a StepSucceeded as a command"):
        codec.encode_command(event)


# -- schema resolution: bytes from an older writer -------------------------------------------------


def test_older_writer_without_a_defaulted_field_decodes_with_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A released ReportTaskFailed without ``retryable`` and ``worker_id`` (both
    defaulted now): its bytes decode through the current reader schema."""
    current = tmp_path / "current"
    old = tmp_path / "released" / "v1"
    shutil.copytree(codec.SCHEMA_DIR, current, ignore=shutil.ignore_patterns("released"))
    old.mkdir(parents=True)
    raw = json.loads((codec.SCHEMA_DIR / "apex.ReportTaskFailed.avsc").read_text())
    raw["fields"] = [f for f in raw["fields"] if f["name"] not in ("retryable", "worker_id")]
    (old / "apex.ReportTaskFailed.avsc").write_text(json.dumps(raw))
    monkeypatch.setattr(codec, "_REGISTRY", codec._build_registry(current, old.parent))

    writer = fastavro.parse_schema(raw)
    assert isinstance(writer, dict)
    body = io.BytesIO()
    fastavro.schemaless_writer(
        body,
        writer,
        {
            "command_id": "c1",
            "run_id": "r1",
            "issued_at_ms": 5,
            "correlation_id": "x",
            "step_id": "s",
            "attempt": 2,
            "error": "boom",
        },
    )
    old_fingerprint = codec.parsing_fingerprint(writer)
    assert old_fingerprint != codec.fingerprint_of(ReportTaskFailed)
    data = b"\xc3\x01" + old_fingerprint.to_bytes(8, "little") + body.getvalue()

    assert codec.decode_command(data) == ReportTaskFailed(
        command_id="c1",
        run_id="r1",
        issued_at_ms=5,
        correlation_id="x",
        step_id="s",
        attempt=2,
        error="boom",
        retryable=True,
        worker_id="",
    )
    assert codec.schema_name_of(data) == "apex.ReportTaskFailed"


def test_every_released_schema_is_decodable_by_fingerprint() -> None:
    for version in codec.released_versions():
        for name, schema in codec.load_schemas(version).items():
            if schema["type"] != "record":
                continue
            data = b"\xc3\x01" + codec.parsing_fingerprint(schema).to_bytes(8, "little")
            assert codec.schema_name_of(data) == name, f"{version.name}/{name}"


# -- schema and model cannot drift -----------------------------------------------------------------


@pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=lambda t: t.__name__)
def test_every_dataclass_field_has_an_avro_field_and_vice_versa(message_type: type) -> None:
    model = [f.name for f in dataclasses.fields(message_type)]
    avro_fields = [f["name"] for f in codec.schema_of(message_type)["fields"]]
    assert avro_fields == model, "same fields, in the same order"


def test_definition_record_has_key_parts_and_the_definition() -> None:
    fields = [f["name"] for f in codec.schema_of(WorkflowDefinition)["fields"]]
    assert fields == ["name", "version", "definition"]


@pytest.mark.parametrize(
    ("types", "base"), [(EVENT_TYPES, Event), (COMMAND_TYPES, Command)], ids=["event", "command"]
)
def test_every_event_and_command_schema_starts_with_the_same_envelope(
    types: tuple[type, ...], base: type
) -> None:
    envelope = [f.name for f in dataclasses.fields(base)]
    first = codec.schema_of(types[0])["fields"][: len(envelope)]
    assert [f["name"] for f in first] == envelope
    for message_type in types:
        assert codec.schema_of(message_type)["fields"][: len(envelope)] == first, message_type


def test_every_schema_file_is_a_message_type_or_used_by_one() -> None:
    used = {f"apex.{_schema_stem(t)}" for t in (*MESSAGE_TYPES, WorkflowDefinition)}
    used.add("apex.GateWhen")
    assert set(codec.load_schemas(codec.SCHEMA_DIR)) == used


@pytest.mark.parametrize(
    "path", sorted(Path(codec.SCHEMA_DIR).glob("*.avsc")), ids=lambda p: p.name
)
def test_every_schema_documents_itself_and_defaults_its_optional_fields(path: Path) -> None:
    raw = json.loads(path.read_text())
    assert raw["namespace"] == "apex" and raw.get("doc"), "namespace apex and a doc"
    for field in raw.get("fields", []):
        assert field.get("doc"), f"{field['name']} has a doc"
        if isinstance(field["type"], list):
            assert field["type"][0] == "null" and field.get("default", 0) is None, field["name"]


# -- helpers ---------------------------------------------------------------------------------------


def _schema_stem(message_type: type) -> str:
    return "Definition" if message_type is WorkflowDefinition else message_type.__name__


def _plain(schema: Any) -> Any:
    """A fastavro-parsed schema without fastavro's private keys: plain Avro JSON."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if not k.startswith("__")}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


def _example(message_type: type) -> Any:
    """One fixed, realistic instance (hypothesis' simplest is too empty for these tests)."""
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(message_type)
    for f in dataclasses.fields(message_type):
        hint = hints[f.name]
        if hint is Any:
            values[f.name] = {"text": "ticket 42", "score": 0.75, "tags": ["billing", "é"]}
        elif hint in (WorkflowDefinition, WorkflowDefinition | None):
            values[f.name] = _example_definition()
        elif hint is GateWhen:
            values[f.name] = GateWhen.AFTER
        elif hint in (int, int | None):
            values[f.name] = 1_700_000_000_123 if f.name.endswith("_ms") else 3
        elif hint is bool:
            values[f.name] = True
        else:
            values[f.name] = f"{f.name}-value"
    return message_type(**values)


def _example_definition() -> WorkflowDefinition:
    return RICH_DEFINITION


def _encode_example(message_type: type) -> bytes:
    if message_type is WorkflowDefinition:
        return codec.encode_definition(_example_definition())
    return ENCODE[message_type](_example(message_type))


def _raw_body(data: bytes, message_type: type) -> dict[str, Any]:
    schema = codec.schema_of(message_type)
    record = fastavro.schemaless_reader(io.BytesIO(data[10:]), schema, None)
    assert isinstance(record, dict)
    return record


def _compiled_write(message: Any) -> bytes:
    """The codec's compiled writer alone, without the fastavro fallback."""
    write = codec._REGISTRY.encoders[type(message)].write
    assert write is not None, f"{type(message).__name__} has no compiled writer"
    return write(message)


def _compiled_read(message_type: type, data: bytes) -> Any:
    """The codec's compiled reader alone, without the fastavro fallback."""
    read = _current_decoder(message_type).read
    assert read is not None, f"{message_type.__name__} has no compiled reader"
    return read(data)


def _fastavro_encode(message: Any) -> bytes:
    """What fastavro writes for a message: the reference for the compiled writer."""
    encoder = codec._REGISTRY.encoders[type(message)]
    body = io.BytesIO()
    fastavro.schemaless_writer(body, encoder.schema, encoder.to_record(message))
    return encoder.header + body.getvalue()


def _fastavro_decode(message_type: type, data: bytes) -> Any:
    """What fastavro reads from a whole message: the reference for the compiled reader."""
    decoder = _current_decoder(message_type)
    assert data[: codec.HEADER_SIZE] == b"\xc3\x01" + decoder.fingerprint.to_bytes(8, "little")
    body = io.BytesIO(data)
    body.seek(codec.HEADER_SIZE)
    record = fastavro.schemaless_reader(body, decoder.writer, decoder.reader)
    assert body.tell() == len(data), "trailing bytes"
    assert isinstance(record, dict)
    return decoder.from_record(record)


def _current_decoder(message_type: type) -> Any:
    encoder = codec._REGISTRY.encoders[message_type]
    return codec._REGISTRY.decoders[encoder.kind][encoder.header[2:]]


def _write_raw(message_type: type, record: dict[str, Any]) -> bytes:
    body = io.BytesIO()
    fastavro.schemaless_writer(body, codec.schema_of(message_type), record)
    return b"\xc3\x01" + codec.fingerprint_of(message_type).to_bytes(8, "little") + body.getvalue()
