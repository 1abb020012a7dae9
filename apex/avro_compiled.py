"""Avro record writers and readers compiled from their schemas: the codec's shortcut.

fastavro interprets the schema on every call, and the codec first builds the dict
it walks: for a StepSucceeded that is about as long as the rest of the round trip.
Apex's record schemas hold only strings, longs, booleans, enums and unions of
"null" with a string or a long, which C (``apex/_avro.c``) writes and reads from
the message's slots directly, so each message type gets a writer and a reader
laid out from its schema at import, with the field conversions (JSON text,
enums, definitions) attached. They are a shortcut, never the authority: when one
raises, for a value or a byte it was not written for, ``_encode``/``_decode``
run the fastavro path, whose result or error is the one returned. So a compiled
function must only ever succeed with what fastavro would give;
tests/unit/test_codec.py checks that they agree, byte for byte, on every
message type and on odd values and damaged bytes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Final, TypeAlias

from apex.domain.frozen import constructor

try:
    from apex import _avro
except ImportError:  # not built (a source tree never installed): fastavro does it all, slower
    _avro = None  # type: ignore[assignment]
    logging.getLogger(__name__).warning(
        "apex._avro (the codec's C part) is not built: every message goes through fastavro; "
        "`pip install -e .` builds it"
    )

Schema: TypeAlias = dict[str, Any]
"""A schema parsed by fastavro (self-contained: named types inlined)."""
Convert: TypeAlias = Callable[[Any], Any]
Write: TypeAlias = Callable[[Any], bytes]
Read: TypeAlias = Callable[[bytes], Any]

HEADER_SIZE: Final = 10
"""Magic (2 bytes) + fingerprint (8 bytes); the Avro body starts here."""


def compile_record(
    cls: type, schema: Schema, header: bytes, conversions: dict[str, tuple[Convert, Convert]]
) -> tuple[Write, Read] | None:
    """The writer and reader of one record type; ``None`` for a field type not covered."""
    if _avro is None:
        return None
    fields = []
    for field in schema["fields"]:
        kind = _kind(field["type"])
        if kind is None:
            return None
        to_wire, from_wire = conversions.get(field["name"], (None, None))
        fields.append((field["name"], kind[0], to_wire, from_wire, kind[1]))
    names = [f.name for f in dataclasses.fields(cls)]
    schema_names = [f[0] for f in fields]
    if sorted(names) != sorted(schema_names):
        return None
    try:
        constructor(cls)  # the domain's contract for building one without __init__
        record = _avro.Record(header, cls, tuple(fields), None)  # straight into its slots
    except TypeError:  # post-init, default factories, no slots: __init__ it is
        record = _avro.Record(header, cls, tuple(fields), _by_keyword(cls, schema_names))
    return record.write, record.read


def _kind(avro_type: Any) -> tuple[int, tuple[str, ...] | None] | None:
    """The C writer's kind of a field type (and an enum's symbols); ``None`` if not covered."""
    assert _avro is not None
    if isinstance(avro_type, list) and len(avro_type) == 2 and avro_type[0] == "null":
        kind = {"string": _avro.OPTIONAL_STRING, "long": _avro.OPTIONAL_LONG}.get(avro_type[1])
    elif isinstance(avro_type, dict) and avro_type.get("type") == "enum":
        return _avro.ENUM, tuple(avro_type["symbols"])
    else:
        kind = {"string": _avro.STRING, "long": _avro.LONG, "boolean": _avro.BOOLEAN}.get(avro_type)
    return None if kind is None else (kind, None)


def _by_keyword(cls: type, names: list[str]) -> Callable[..., Any]:
    """``cls(**fields)`` from the values in schema order."""

    def make(*values: Any) -> Any:
        return cls(**dict(zip(names, values, strict=True)))

    return make
