"""Avro record writers and readers compiled from their schemas: the codec's shortcut.

fastavro interprets the schema on every call, and the codec first builds the dict
it walks: for a StepSucceeded that is about as long as the rest of the round trip.
Apex's record schemas hold only strings, longs, booleans, enums and unions of
"null" with a string or a long, which straight-line Python writes and reads
faster, so each message type gets a writer and a reader compiled from its schema
at import (the way ``dataclasses`` compiles ``__init__``), with the field
conversions inlined. They are a shortcut, never the authority: when one raises,
for a value or a byte it was not written for, ``_encode``/``_decode`` run the
fastavro path, whose result or error is the one returned. So a compiled function
must only ever succeed with what fastavro would give; tests/unit/test_codec.py
checks that they agree, byte for byte, on every message type. (Measured on the
2-core machine: StepSucceeded encode + decode from about 17.5 µs to about 9.5 µs.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Final, TypeAlias

from apex.domain.frozen import constructor

Schema: TypeAlias = dict[str, Any]
"""A schema parsed by fastavro (self-contained: named types inlined)."""
Convert: TypeAlias = Callable[[Any], Any]
Write: TypeAlias = Callable[[Any], bytes]
Read: TypeAlias = Callable[[bytes], Any]

HEADER_SIZE: Final = 10
"""Magic (2 bytes) + fingerprint (8 bytes); the Avro body starts here."""

_VARINTS: Final = tuple(
    # Avro's zig-zag varint of 0..1023: most lengths and small longs, by lookup.
    bytes([(n << 1) & 0x7F | 0x80, n >> 6]) if n >= 64 else bytes([n << 1])
    for n in range(1024)
)
_ONE_BYTE_LONGS: Final = tuple(
    # The long a first byte is when it is the only one; None: more bytes follow.
    (b >> 1) ^ -(b & 1) if b < 0x80 else None
    for b in range(256)
)
_ONE_BYTE_LENGTHS: Final = tuple(
    # The same for a length: -1 also when it is negative (fastavro's to judge).
    b >> 1 if b < 0x80 and not b & 1 else -1
    for b in range(256)
)
_BYTES: Final = tuple(bytes([n]) for n in range(128))
_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1


_FOURTEEN_BITS: Final = tuple(
    # 14 bits of a varint that goes on, as its two bytes (both with the continuation bit).
    bytes([n & 0x7F | 0x80, n >> 7 | 0x80])
    for n in range(1 << 14)
)


def _write_long(value: int) -> bytes:
    """Avro's zig-zag varint of a long the table does not hold.

    Fourteen bits a step by lookup: a millisecond timestamp, on most records,
    is three steps and a byte rather than seven rounds of shifting and masking.
    """
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise OverflowError(f"{value} does not fit an Avro long")
    n = (value << 1) ^ (value >> 63)
    out = b""
    while n > 0x3FFF:
        out += _FOURTEEN_BITS[n & 0x3FFF]
        n >>= 14
    if n > 0x7F:
        return out + bytes((n & 0x7F | 0x80, n >> 7))
    return out + _BYTES[n]


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """The long at ``pos`` and the position after it; only what fastavro reads alike."""
    n = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")
    if n >> 64:  # fastavro keeps the low 64 bits: let it say what it reads
        raise ValueError("a varint beyond 64 bits")
    return (n >> 1) ^ -(n & 1), pos


def compile_record(
    cls: type, schema: Schema, header: bytes, conversions: dict[str, tuple[Convert, Convert]]
) -> tuple[Write, Read] | None:
    """The writer and reader of one record type; ``None`` for a field type not covered."""
    namespace: dict[str, Any] = {
        "_cls": cls,
        "_HEADER": header,
        "_VARINTS": _VARINTS,
        "_write_long": _write_long,
        "_read_long": _read_long,
        "_ONE_BYTE_LONGS": _ONE_BYTE_LONGS,
        "_ONE_BYTE_LENGTHS": _ONE_BYTE_LENGTHS,
        "_BOOLEANS": (False, True),
        "_BOOLEAN_BYTES": {False: b"\x00", True: b"\x01"},
    }
    writes: list[str] = []
    parts = ["_HEADER"]
    reads: list[str] = []
    values: list[tuple[str, str]] = []
    for i, field in enumerate(schema["fields"]):
        name, value, read_value = field["name"], f"v{i}", f"v{i}"
        if name in conversions:
            namespace[f"_to{i}"], namespace[f"_from{i}"] = conversions[name]
            writes.append(f"v{i} = _to{i}(message.{name})")
            read_value = f"_from{i}(v{i})"
        else:
            value = f"message.{name}"
        code = _field_code(i, field["type"], value, namespace)
        if code is None:
            return None
        write, read, field_parts = code
        writes += write
        parts += field_parts
        reads += read
        values.append((name, read_value))
    source = "\n".join(
        [
            "def write(message):",
            *_indent(writes),
            f"    return b''.join(({', '.join(parts)}))",
            "",
            "def read(data):",
            "    if type(data) is not bytes:",
            "        data = bytes(data)  # a memoryview has no decode()",
            "    end = len(data)",
            f"    pos = {HEADER_SIZE}",
            *_indent(reads),
            "    if pos != end:",
            "        raise ValueError('trailing bytes')",
            *_indent(_construction_code(cls, values, namespace)),
        ]
    )
    exec(compile(source, f"<apex.codec: {schema['name']}>", "exec"), namespace)
    return namespace["write"], namespace["read"]


def _field_code(
    i: int, avro_type: Any, value: str, namespace: dict[str, Any]
) -> tuple[list[str], list[str], list[str]] | None:
    """How to write and read one field, or ``None`` when it is not covered.

    Lines that write ``value``, lines that read it into ``v<i>`` at ``pos``, and
    the names of the bytes the writing lines leave, in order.
    """
    if isinstance(avro_type, list) and len(avro_type) == 2 and avro_type[0] == "null":
        # fastavro picks the branch of a value by its type: anything but exactly
        # None, a str or an int (bool is not a long there) is left to it.
        branch = avro_type[1]
        strict = {"string": "str", "long": "int"}.get(branch)
        inner = _field_code(i, branch, f"v{i}", namespace)
        if strict is None or inner is None:
            return None
        write = [
            f"v{i} = {value}",
            f"if v{i} is None:",
            f"    b{i} = b'\\x00'",
            f"elif type(v{i}) is {strict}:",
            *_indent(inner[0]),
            f"    b{i} = b'\\x02' + {' + '.join(inner[2])}",
            "else:",
            f"    raise TypeError('not a {branch} or None')",
        ]
        read = [
            "branch = data[pos]",
            "pos += 1",
            "if branch == 0:",
            f"    v{i} = None",
            "elif branch == 2:",
            *_indent(inner[1]),
            "else:",
            "    raise ValueError('bad union branch')",
        ]
        return write, read, [f"b{i}"]
    if avro_type == "string":
        write = [
            f"s{i} = {value}.encode()",
            f"n = len(s{i})",
            f"b{i} = _VARINTS[n] if n < 1024 else _write_long(n)",
        ]
        read = [
            "n = _ONE_BYTE_LENGTHS[data[pos]]",
            "if n < 0:",
            "    n, pos = _read_long(data, pos)",
            "    if n < 0:",
            "        raise ValueError('negative length')",
            "else:",
            "    pos += 1",
            "stop = pos + n",
            "if stop > end:",
            "    raise EOFError",
            f"v{i} = data[pos:stop].decode()",
            "pos = stop",
        ]
        return write, read, [f"b{i}", f"s{i}"]
    if avro_type == "long":
        # A float or None fails the lookup and the shift; fastavro then decides.
        write = [f"b{i} = _VARINTS[n] if 0 <= (n := {value}) < 1024 else _write_long(n)"]
        return write, _read_long_code(f"v{i}"), [f"b{i}"]
    if avro_type == "boolean":
        # fastavro writes any value's truth; only True and False (1 and 0) here.
        write = [f"b{i} = _BOOLEAN_BYTES[{value}]"]
        return write, [f"v{i} = _BOOLEANS[data[pos]]", "pos += 1"], [f"b{i}"]
    if isinstance(avro_type, dict) and avro_type.get("type") == "enum":
        symbols = tuple(avro_type["symbols"])
        if len(symbols) > len(_VARINTS):
            return None
        namespace[f"_symbol_bytes{i}"] = {s: _VARINTS[k] for k, s in enumerate(symbols)}
        namespace[f"_symbols{i}"] = symbols
        read = [
            *_read_long_code("n"),
            "if n < 0:",
            "    raise ValueError('bad enum index')",
            f"v{i} = _symbols{i}[n]",
        ]
        return [f"b{i} = _symbol_bytes{i}[{value}]"], read, [f"b{i}"]
    return None


def _construction_code(
    cls: type, values: list[tuple[str, str]], namespace: dict[str, Any]
) -> list[str]:
    """Lines that return the message built from ``(field, expression)`` pairs.

    A frozen dataclass's ``__init__`` stores each field with ``object.__setattr__``:
    about 2 µs for eight fields, a fifth of the budget. The domain's fast
    constructor (:func:`apex.domain.frozen.constructor`) builds the same object
    when the class allows it; otherwise ``__init__`` is called.
    """
    by_name = dict(values)
    names = [f.name for f in dataclasses.fields(cls)]
    if set(by_name) == set(names):
        try:
            namespace["_make"] = constructor(cls)
        except TypeError:  # post-init, default factories, no slots: __init__ it is
            pass
        else:
            return [f"return _make({', '.join(by_name[name] for name in names)})"]
    return [f"return _cls({', '.join(f'{name}={value}' for name, value in values)})"]


def _read_long_code(target: str) -> list[str]:
    """Read a long into ``target``: one-byte values by lookup, the rest by a call."""
    return [
        f"{target} = _ONE_BYTE_LONGS[data[pos]]",
        f"if {target} is None:",
        f"    {target}, pos = _read_long(data, pos)",
        "else:",
        "    pos += 1",
    ]


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]
