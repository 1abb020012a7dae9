"""Avro on every topic (invariant 5): single-object encoding with fastavro.

A message is ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of its
writer schema's Parsing Canonical Form, then the Avro binary body. Every
command, event, task dispatch, result and definition type has its own record
schema in ``schemas/avro/`` (why not one envelope with a union: see
``schemas/avro/README.md``), so the fingerprint alone says what a message is.

Schemas are parsed once, at import. Decoding looks the fingerprint up among the
current schemas and every released version (``schemas/avro/released/v*/``) and
resolves an older writer schema to the current reader schema. Whatever cannot
be decoded — bad magic, an unknown fingerprint, truncated or corrupt bytes, a
body that does not map to a domain object — raises :class:`CodecError`, the one
error the runtime routes to ``apex.dlq``.

Encoding and decoding take a shortcut: each message type has a writer and a
reader compiled from its schema at import (see "compiled record codecs" below),
about twice as fast as building a dict for fastavro. fastavro stays the
reference: whatever the shortcut does not take, fastavro encodes, decodes, or
rejects with the error it always gave. Usage::

    data = encode_event(event)          # bytes for apex.events
    assert decode_event(data) == event

This module is an adapter, not part of the pure domain: it reads files at
import and depends on fastavro.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import typing
from collections.abc import Callable, Iterator
from enum import Enum
from io import BytesIO
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeAlias

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import load_schema, to_parsing_canonical_form

from apex.avro_compiled import HEADER_SIZE, Convert, Read, Schema, Write, compile_record
from apex.domain.commands import COMMAND_TYPES, Command
from apex.domain.definition_format import definition_from_dict, definition_to_dict
from apex.domain.definitions import WorkflowDefinition
from apex.domain.events import EVENT_TYPES, Event
from apex.domain.messages import RunResult, StepResult, TaskDispatch
from apex.jsonvalue import dumps_canonical, loads

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "RELEASED_DIR",
    "SCHEMA_DIR",
    "CodecError",
    "decode_command",
    "decode_definition",
    "decode_dispatch",
    "decode_event",
    "decode_result",
    "encode_command",
    "encode_definition",
    "encode_dispatch",
    "encode_event",
    "encode_run_result",
    "encode_step_result",
    "fingerprint_of",
    "load_schemas",
    "parsing_fingerprint",
    "released_versions",
    "schema_name_of",
    "schema_of",
]

SCHEMA_DIR: Final = Path(__file__).resolve().parent.parent / "schemas" / "avro"
RELEASED_DIR: Final = SCHEMA_DIR / "released"
MAGIC: Final = b"\xc3\x01"


class CodecError(ValueError):
    """A message that cannot be encoded or decoded; the runtime sends it to the DLQ.

    ``fingerprint`` is the CRC-64-AVRO value read from (or meant for) the
    message, as an unsigned integer (the 8 header bytes read little-endian);
    ``schema`` the full name of its schema when known; ``offset`` the byte
    offset in the message where decoding stopped, when it applies.
    """

    def __init__(
        self,
        message: str,
        *,
        fingerprint: int | None = None,
        schema: str | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint
        self.schema = schema
        self.offset = offset


# -- public API ------------------------------------------------------------------------


def encode_command(command: Command) -> bytes:
    """Encode a command for ``apex.commands``."""
    return _encode(command, "command")


def decode_command(data: bytes) -> Command:
    """Decode a message from ``apex.commands``; :class:`CodecError` if it is not one."""
    result: Command = _decode(data, "command")
    return result


def encode_event(event: Event) -> bytes:
    """Encode an event for ``apex.events``."""
    return _encode(event, "event")


def decode_event(data: bytes) -> Event:
    """Decode a message from ``apex.events``; :class:`CodecError` if it is not one."""
    result: Event = _decode(data, "event")
    return result


def encode_dispatch(dispatch: TaskDispatch) -> bytes:
    """Encode a task dispatch for ``apex.tasks.<capability>``."""
    return _encode(dispatch, "task dispatch")


def decode_dispatch(data: bytes) -> TaskDispatch:
    """Decode a message from ``apex.tasks.<capability>``."""
    result: TaskDispatch = _decode(data, "task dispatch")
    return result


def encode_run_result(result: RunResult) -> bytes:
    """Encode a run's result for ``apex.results``."""
    return _encode(result, "result")


def encode_step_result(result: StepResult) -> bytes:
    """Encode a published step's result for ``apex.results``."""
    return _encode(result, "result")


def decode_result(data: bytes) -> RunResult | StepResult:
    """Decode a message from ``apex.results``: either type, told apart by fingerprint."""
    result: RunResult | StepResult = _decode(data, "result")
    return result


def encode_definition(definition: WorkflowDefinition) -> bytes:
    """Encode a workflow definition for ``apex.definitions`` (key ``name@version``)."""
    return _encode(definition, "definition")


def decode_definition(data: bytes) -> WorkflowDefinition:
    """Decode a message from ``apex.definitions``."""
    result: WorkflowDefinition = _decode(data, "definition")
    return result


def schema_name_of(data: bytes) -> str | None:
    """The full schema name of a message from its header, without decoding the body.

    ``None`` when the header is not an Apex single-object header. Meant for DLQ
    headers, metrics and tools that route by type.
    """
    if data[:2] != MAGIC:
        return None
    decoder = _REGISTRY.all_decoders.get(bytes(data[2:HEADER_SIZE]))
    return None if decoder is None else decoder.name


def fingerprint_of(message_type: type) -> int:
    """The CRC-64-AVRO fingerprint of the current schema of a message type."""
    return int.from_bytes(_encoder_for(message_type).header[2:], "little")


def schema_of(message_type: type) -> Schema:
    """The current parsed (self-contained) schema of a message type."""
    return _encoder_for(message_type).schema


def parsing_fingerprint(schema: Schema) -> int:
    """CRC-64-AVRO of a parsed schema's Parsing Canonical Form, as an unsigned int."""
    # fastavro gives the hex of the 8 bytes in little-endian order (as Java writes them).
    digest = _fastavro_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
    return int.from_bytes(bytes.fromhex(digest), "little")


def load_schemas(directory: Path) -> dict[str, Schema]:
    """Parse every ``<full name>.avsc`` of a directory, by full name.

    Named types defined in sibling files (e.g. ``apex.GateWhen``) are inlined by
    fastavro's ``load_schema``, so each schema is self-contained: a writer
    schema must be, both for its fingerprint and for resolution.
    """
    schemas: dict[str, Schema] = {}
    for path in sorted(directory.glob("*.avsc")):
        schema = load_schema(str(path))
        if not isinstance(schema, dict) or schema.get("name") != path.stem:
            raise RuntimeError(
                f"{path}: a schema file must hold one named type whose full name is the "
                f"file name (expected {path.stem!r})"
            )
        schemas[path.stem] = schema
    return schemas


# -- the hot path -------------------------------------------------------------------------


def _encode(message: Any, kind: str) -> bytes:
    write = _REGISTRY.writers[kind].get(type(message))
    if write is not None:
        try:
            return write(message)
        except Exception:
            pass  # a value the compiled writer does not take: fastavro decides
    return _encode_with_fastavro(message, kind)


def _decode(data: bytes, kind: str) -> Any:
    header = data[:HEADER_SIZE]
    read = _REGISTRY.readers[kind].get(header if type(header) is bytes else bytes(header))
    if read is not None:
        try:
            return read(data)
        except Exception:
            pass  # bytes the compiled reader does not take: fastavro decides
    return _decode_with_fastavro(data, kind)


def _encode_with_fastavro(message: Any, kind: str) -> bytes:
    """The reference encoding, and the errors: the compiled writers only take a shortcut."""
    encoder = _REGISTRY.encoders.get(type(message))
    if encoder is None or encoder.kind != kind:
        raise CodecError(f"cannot encode a {type(message).__name__} as {_a(kind)}")
    buffer = BytesIO()
    buffer.write(encoder.header)
    try:
        schemaless_writer(buffer, encoder.schema, encoder.to_record(message))
    except Exception as exc:
        # fastavro and json raise many types (TypeError, ValueError, OverflowError,
        # UnicodeEncodeError, ...) for a value that does not fit the schema.
        raise CodecError(
            f"cannot encode {type(message).__name__} as {encoder.name}: {exc}",
            fingerprint=encoder.fingerprint,
            schema=encoder.name,
        ) from exc
    return buffer.getvalue()


def _decode_with_fastavro(data: bytes, kind: str) -> Any:
    """The reference decoding, and the errors: the compiled readers only take a shortcut."""
    if data[:2] != MAGIC:
        raise CodecError(
            f"not an Avro single-object message: starts with {bytes(data[:2]).hex() or 'nothing'}"
            f", expected c301 ({len(data)} bytes)",
            offset=0,
        )
    if len(data) < HEADER_SIZE:
        raise CodecError(
            f"truncated header: {len(data)} bytes, a header has {HEADER_SIZE}", offset=len(data)
        )
    key = bytes(data[2:HEADER_SIZE])
    decoder = _REGISTRY.decoders[kind].get(key)
    if decoder is None:
        raise _unknown_fingerprint(key, kind)
    buffer = BytesIO(data)
    buffer.seek(HEADER_SIZE)
    try:
        record = typing.cast(
            dict[str, Any], schemaless_reader(buffer, decoder.writer, decoder.reader)
        )
    except Exception as exc:
        # EOFError when truncated; UnicodeDecodeError, IndexError, ... when corrupt.
        raise CodecError(
            f"corrupt or truncated {decoder.name} body ({len(data)} bytes, fingerprint "
            f"0x{decoder.fingerprint:016x}): {type(exc).__name__}: {exc}",
            fingerprint=decoder.fingerprint,
            schema=decoder.name,
            offset=buffer.tell(),
        ) from exc
    if buffer.tell() != len(data):
        raise CodecError(
            f"{len(data) - buffer.tell()} unexpected bytes after the {decoder.name} body "
            f"at offset {buffer.tell()} (fingerprint 0x{decoder.fingerprint:016x})",
            fingerprint=decoder.fingerprint,
            schema=decoder.name,
            offset=buffer.tell(),
        )
    try:
        return decoder.from_record(record)
    except Exception as exc:
        raise CodecError(
            f"{decoder.name} body does not map to a domain object (fingerprint "
            f"0x{decoder.fingerprint:016x}): {type(exc).__name__}: {exc}",
            fingerprint=decoder.fingerprint,
            schema=decoder.name,
        ) from exc


def _unknown_fingerprint(key: bytes, kind: str) -> CodecError:
    value = int.from_bytes(key, "little")
    other = _REGISTRY.all_decoders.get(key)
    if other is not None:
        return CodecError(
            f"fingerprint 0x{value:016x} is {other.name}, {_a(other.kind)}, not {_a(kind)}",
            fingerprint=value,
            schema=other.name,
            offset=2,
        )
    return CodecError(
        f"unknown schema fingerprint 0x{value:016x} for {_a(kind)}: written with a schema that "
        "is neither current nor released (a newer producer, or not an Apex message)",
        fingerprint=value,
        offset=2,
    )


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _encoder_for(message_type: type) -> _Encoder:
    try:
        return _REGISTRY.encoders[message_type]
    except KeyError:
        raise KeyError(f"{message_type.__name__} has no Avro schema") from None


# -- per-type converters, built once ---------------------------------------------------------


_ToRecord: TypeAlias = Callable[[Any], dict[str, Any]]
_FromRecord: TypeAlias = Callable[[dict[str, Any]], Any]


class _Encoder(NamedTuple):
    kind: str
    name: str
    fingerprint: int
    header: bytes
    schema: Schema
    to_record: _ToRecord
    write: Write | None
    """The compiled writer (header + body), when the schema allows one."""


class _Decoder(NamedTuple):
    kind: str
    name: str
    fingerprint: int
    writer: Schema
    reader: Schema | None
    """``None`` when the writer schema is the current one: no resolution needed."""
    from_record: _FromRecord
    read: Read | None
    """The compiled reader (whole message), when there is no resolution to do."""


def _record_converters(cls: type) -> tuple[_ToRecord, _FromRecord]:
    """``dataclass -> dict`` and ``dict -> dataclass`` for one message type.

    Field names are the Avro field names; a field converts by its domain type
    (see :func:`_field_conversions`).
    """
    names = tuple(f.name for f in dataclasses.fields(cls))
    conversions = _field_conversions(cls)
    to_wire = tuple((name, conversions[name][0]) for name in names if name in conversions)
    from_wire = tuple((name, conversions[name][1]) for name in names if name in conversions)
    get_values = operator.attrgetter(*names)  # a tuple of values, in C (names > 1)

    def to_record(message: Any) -> dict[str, Any]:
        record = dict(zip(names, get_values(message), strict=True))
        for name, convert in to_wire:
            record[name] = convert(record[name])
        return record

    def from_record(record: dict[str, Any]) -> Any:
        for name, convert in from_wire:
            record[name] = convert(record[name])
        return cls(**record)

    return to_record, from_record


def _field_conversions(cls: type) -> dict[str, tuple[Convert, Convert]]:
    """``(to wire, from wire)`` for each field whose value is not written as it is.

    A JSON value converts to and from canonical JSON text, a definition to and
    from the canonical JSON of the definition format, an enum to and from its value.
    """
    hints = typing.get_type_hints(cls)
    conversions = {f.name: _conversion_for(hints[f.name]) for f in dataclasses.fields(cls)}
    return {name: c for name, c in conversions.items() if c is not None}


def _conversion_for(hint: Any) -> tuple[Convert, Convert] | None:
    if hint is Any:  # the domain's JSON alias
        return dumps_canonical, loads
    if hint is WorkflowDefinition:
        return _definition_to_json, _definition_from_json
    if hint == WorkflowDefinition | None:
        return _optional(_definition_to_json), _optional(_definition_from_json)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return operator.attrgetter("value"), hint
    return None


def _optional(convert: Convert) -> Convert:
    return lambda value: None if value is None else convert(value)


def _definition_to_json(definition: WorkflowDefinition) -> str:
    # Cached by identity: the orchestrator starts many runs with the same
    # definition object, and writing it costs ~100 µs for ten steps. The entry
    # holds the object, so its id cannot be reused while cached; definitions
    # are immutable (frozen, and their mappings are never mutated).
    cached = _DEFINITION_TEXTS.get(id(definition))
    if cached is not None and cached[0] is definition:
        return cached[1]
    text = dumps_canonical(definition_to_dict(definition))
    if len(_DEFINITION_TEXTS) >= _DEFINITION_CACHE_SIZE:
        _DEFINITION_TEXTS.clear()
    _DEFINITION_TEXTS[id(definition)] = (definition, text)
    return text


_DEFINITION_CACHE_SIZE: Final = 256
_DEFINITION_TEXTS: dict[int, tuple[WorkflowDefinition, str]] = {}


@functools.lru_cache(maxsize=_DEFINITION_CACHE_SIZE)
def _definition_from_json(text: str) -> WorkflowDefinition:
    # Cached: a replay reads the same definition once per run; the text is its
    # identity, and definitions are immutable.
    definition: WorkflowDefinition = definition_from_dict(loads(text))
    return definition


def _definition_record(definition: WorkflowDefinition) -> dict[str, Any]:
    return {
        "name": definition.name,
        "version": definition.version,
        "definition": _definition_to_json(definition),
    }


def _definition_from_record(record: dict[str, Any]) -> WorkflowDefinition:
    definition = _definition_from_json(record["definition"])
    if (definition.name, definition.version) != (record["name"], record["version"]):
        raise ValueError(
            f"the record says {record['name']}@{record['version']} but its definition is "
            f"{definition.key}"
        )
    return definition


# -- the registry -----------------------------------------------------------------------------


def _message_types() -> Iterator[tuple[type, str, str]]:
    """Every message type with its kind and schema full name."""
    for command_type in COMMAND_TYPES:
        yield command_type, "command", f"apex.{command_type.__name__}"
    for event_type in EVENT_TYPES:
        yield event_type, "event", f"apex.{event_type.__name__}"
    yield TaskDispatch, "task dispatch", "apex.TaskDispatch"
    yield RunResult, "result", "apex.RunResult"
    yield StepResult, "result", "apex.StepResult"
    yield WorkflowDefinition, "definition", "apex.Definition"


def released_versions(released_dir: Path = RELEASED_DIR) -> list[Path]:
    """``released/v1``, ``released/v2``, ... in release order."""
    dirs = [d for d in released_dir.glob("v*") if d.is_dir() and d.name[1:].isdigit()]
    return sorted(dirs, key=lambda d: int(d.name[1:]))


class _Registry(NamedTuple):
    encoders: dict[type, _Encoder]
    decoders: dict[str, dict[bytes, _Decoder]]
    """By kind, then by the 8 fingerprint bytes as written."""
    all_decoders: dict[bytes, _Decoder]
    writers: dict[str, dict[type, Write]]
    """The compiled writers by kind, then message type: the hot path's one lookup."""
    readers: dict[str, dict[bytes, Read]]
    """The compiled readers by kind, then the whole 10-byte header."""


def _build_registry(schema_dir: Path, released_dir: Path) -> _Registry:
    current = load_schemas(schema_dir)
    released = [load_schemas(d) for d in released_versions(released_dir)]
    encoders: dict[type, _Encoder] = {}
    decoders: dict[str, dict[bytes, _Decoder]] = {}
    for message_type, kind, name in _message_types():
        if name not in current:
            raise RuntimeError(f"no schema {name}.avsc in {schema_dir} for {message_type.__name__}")
        schema = current[name]
        value = parsing_fingerprint(schema)
        key = value.to_bytes(8, "little")
        to_record: _ToRecord
        from_record: _FromRecord
        compiled: tuple[Write, Read] | None = None
        if message_type is WorkflowDefinition:  # rare, and checked on the way in: no need
            to_record, from_record = _definition_record, _definition_from_record
        else:
            _check_fields_match(message_type, schema)
            to_record, from_record = _record_converters(message_type)
            conversions = _field_conversions(message_type)
            compiled = compile_record(message_type, schema, MAGIC + key, conversions)
        write, read = compiled or (None, None)
        encoders[message_type] = _Encoder(kind, name, value, MAGIC + key, schema, to_record, write)
        by_key = decoders.setdefault(kind, {})
        by_key[key] = _Decoder(kind, name, value, schema, None, from_record, read)
        for old in (version[name] for version in released if name in version):
            old_value = parsing_fingerprint(old)
            old_key = old_value.to_bytes(8, "little")
            if old_key not in by_key:
                by_key[old_key] = _Decoder(kind, name, old_value, old, schema, from_record, None)
    all_decoders = {key: d for by_key in decoders.values() for key, d in by_key.items()}
    writers: dict[str, dict[type, Write]] = {kind: {} for kind in decoders}
    for message_type, encoder in encoders.items():
        if encoder.write is not None:
            writers[encoder.kind][message_type] = encoder.write
    readers = {
        kind: {MAGIC + key: d.read for key, d in by_key.items() if d.read is not None}
        for kind, by_key in decoders.items()
    }
    return _Registry(encoders, decoders, all_decoders, writers, readers)


def _check_fields_match(message_type: type, schema: Schema) -> None:
    """Fail at import rather than mis-decode when a dataclass and its schema drift."""
    model = [f.name for f in dataclasses.fields(message_type)]
    avro = [f["name"] for f in schema["fields"]]
    if set(model) != set(avro):
        raise RuntimeError(
            f"{message_type.__name__} and {schema['name']} disagree: only in the dataclass "
            f"{sorted(set(model) - set(avro))}, only in the schema {sorted(set(avro) - set(model))}"
        )


_REGISTRY = _build_registry(SCHEMA_DIR, RELEASED_DIR)
