"""The codec's C writer and reader (apex/_avro.c) on record types of their own.

tests/unit/test_codec.py checks them against fastavro on every message type;
these check what no message type has: a class that must be built through its
``__init__`` (a ``__post_init__``, no slots), and a message of another type.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields, make_dataclass
from enum import Enum
from typing import Any

import fastavro
import pytest

from apex.avro_compiled import compile_record

HEADER = b"\xc3\x01" + bytes(8)
SCHEMA: dict[str, Any] = fastavro.parse_schema(
    {
        "type": "record",
        "name": "test.Sample",
        "fields": [
            {"name": "name", "type": "string"},
            {"name": "count", "type": "long"},
            {"name": "done", "type": "boolean"},
            {
                "name": "color",
                "type": {"type": "enum", "name": "test.Color", "symbols": ["R", "G"]},
            },
            {"name": "note", "type": ["null", "string"]},
            {"name": "limit", "type": ["null", "long"]},
        ],
    }
)


class Color(Enum):
    R = "R"
    G = "G"


CONVERSIONS = {"color": (lambda c: c.value, Color)}


@dataclass(frozen=True)
class Checked:
    """No slots, and a ``__post_init__`` that must run for every message built."""

    name: str
    count: int
    done: bool
    color: Color
    note: str | None
    limit: int | None

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must not be negative")


Slotted = make_dataclass(
    "Slotted", [(f.name, f.type) for f in fields(Checked)], frozen=True, slots=True
)
"""The same fields in slots, no ``__post_init__``: built straight into its slots."""


def _fastavro_body(message: Any) -> bytes:
    out = io.BytesIO()
    record = {**vars_of(message), "color": message.color.value}
    fastavro.schemaless_writer(out, SCHEMA, record)
    return out.getvalue()


def vars_of(message: Any) -> dict[str, Any]:
    return {f["name"]: getattr(message, f["name"]) for f in SCHEMA["fields"]}


@pytest.mark.parametrize("cls", [Checked, Slotted])
@pytest.mark.parametrize(
    "values",
    [
        ("", 0, False, Color.R, None, None),
        ("é ünïcode ✓", 2**63 - 1, True, Color.G, "a note", -(2**63)),
        ("x" * 3000, 1_763_740_800_000, True, Color.R, "", 0),
    ],
)
def test_round_trip_is_what_fastavro_writes_and_reads(cls: type, values: tuple[Any, ...]) -> None:
    compiled = compile_record(cls, SCHEMA, HEADER, CONVERSIONS)
    assert compiled is not None
    write, read = compiled
    message = cls(*values)
    data = write(message)
    assert data == HEADER + _fastavro_body(message)
    decoded = read(data)
    assert type(decoded) is cls and decoded == message
    assert read(memoryview(data)) == message
    assert read(bytearray(data)) == message


def test_a_class_with_post_init_is_built_through_it() -> None:
    compiled = compile_record(Checked, SCHEMA, HEADER, CONVERSIONS)
    assert compiled is not None
    write, read = compiled
    data = write(Checked("n", 5, True, Color.R, None, 7))
    negative = data.replace(b"\x0a", b"\x09", 1)  # count 5 (zig-zag 10) -> -5 (9)
    with pytest.raises(ValueError, match="count must not be negative"):
        read(negative)


def test_a_message_of_another_type_is_refused() -> None:
    compiled = compile_record(Slotted, SCHEMA, HEADER, CONVERSIONS)
    assert compiled is not None
    write, _ = compiled
    with pytest.raises(TypeError, match="another type"):
        write(Checked("n", 1, True, Color.R, None, None))


def test_a_field_type_not_covered_gets_no_compiled_codec() -> None:
    schema = fastavro.parse_schema(
        {"type": "record", "name": "test.Floaty", "fields": [{"name": "x", "type": "double"}]}
    )

    @dataclass(frozen=True, slots=True)
    class Floaty:
        x: float

    assert compile_record(Floaty, schema, HEADER, {}) is None


def test_a_record_is_initialised_once_and_refuses_work_before() -> None:
    from apex import _avro

    blank = _avro.Record.__new__(_avro.Record)
    with pytest.raises(TypeError, match="uninitialised"):
        blank.read(HEADER)
    with pytest.raises(TypeError, match="uninitialised"):
        blank.write(Slotted("n", 1, True, Color.R, None, None))
    compiled = compile_record(Slotted, SCHEMA, HEADER, CONVERSIONS)
    assert compiled is not None
    record = compiled[0].__self__  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="initialised once"):
        record.__init__(HEADER, Slotted, (), None)
