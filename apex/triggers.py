"""Trigger rules: business events that upstream systems publish become commands.

An upstream system keeps publishing its own events on its own topics, in its
own JSON or Avro; a rules file says which of them start a workflow run and
which wake one (``streams/triggers.py`` applies it). The upstream system never
learns Apex's command schema or run ids::

    rules:
      - name: ticket-opened
        topic: shop.tickets            # the upstream topic, as named (no Apex prefix)
        format: json                   # json (default) | avro, with `schema: path/to.avsc`
        when: {field: $.type, equals: opened}     # optional; a list: all must hold
        start_run:
          definition: ticket_triage
          version: 1                   # optional: the latest registered version
          input: {ticket_id: $.ticket.id, subject: $.ticket.subject}
          idempotency_key: $.ticket.id # required: one business key, one run
      - name: customer-replied
        topic: shop.tickets
        when: {field: $.type, equals: replied}
        send_signal:
          definition: ticket_triage
          correlation: $.ticket.id     # the key the run was started with
          signal: customer_reply
          payload: $.reply             # optional

**Run ids come from business keys.** A run started by a rule has the run id
``run_id_for(definition, idempotency key)`` (:func:`apex.client.run_id_for`);
a signal rule targets the run ``run_id_for(definition, correlation value)``
and puts that value in the ``SendSignal``'s ``correlation_key`` too. So the
same business key that started a run wakes it later, and a business event
delivered twice starts one run (the decider ignores a ``StartRun`` whose
idempotency key it has seen). Keys are strings or integers (``42`` is ``"42"``).

**Field paths** are ``$`` (the whole event) or ``$.a.b.0.c``: keys of
objects, and decimal indexes of lists. A path ending in ``?`` is optional in
``input``/``payload``: when it is missing its key is left out (``null`` in a
list); any other missing path fails the event for that rule, which then goes
to the DLQ with the reason. Other strings are literals; write ``$$`` for a
literal that starts with ``$``.

**Filters** (``when``): ``field`` and exactly one of ``equals``,
``not_equals``, ``in``, ``not_in`` (lists) or ``exists`` (a boolean). A
missing field equals nothing; ``true`` equals only ``true``, never ``1``.

**Avro** events are decoded with the rule's writer schema, either plain Avro
binary or single-object encoding (``C3 01`` + the schema's 8-byte
fingerprint + body), told apart by the header. Values become JSON: bytes as
base64 text, decimals, UUIDs and dates as strings. Every rule reading a topic
must agree on its format and schema.

Everything here is pure except reading the rules file and its schemas:
:func:`match` takes the command id and time; nothing here talks to Kafka.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from io import BytesIO
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import yaml
from fastavro import schemaless_reader
from fastavro.schema import load_schema

from apex.client import run_id_for  # the one mapping from business key to run id
from apex.codec import HEADER_SIZE, MAGIC, parsing_fingerprint
from apex.domain.commands import Command, SendSignal, StartRun
from apex.domain.errors import did_you_mean
from apex.jsonvalue import loads

__all__ = [
    "DecodeError",
    "EventDecoder",
    "ExtractionError",
    "FieldPath",
    "Filter",
    "Rule",
    "RuleSet",
    "RulesError",
    "SendSignalAction",
    "StartRunAction",
    "command_id_for",
    "load_rules",
    "match",
    "parse_rules",
    "rule_to_dict",
]

Format = Literal["json", "avro"]
FilterOp = Literal["equals", "not_equals", "in", "not_in", "exists"]
FILTER_OPS: tuple[FilterOp, ...] = ("equals", "not_equals", "in", "not_in", "exists")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_MISSING: Any = object()


class RulesError(ValueError):
    """A rules file was refused; ``problems`` lists every reason, each naming rule and field."""

    def __init__(self, problems: Sequence[str], *, source: str = "<rules>") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.problems)
        head = f"{self.source}: invalid trigger rules ({count} problem{'' if count == 1 else 's'}):"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


class ExtractionError(ValueError):
    """A rule matched an event but could not take a required value from it."""

    def __init__(self, rule: str, where: str, reason: str) -> None:
        self.rule, self.where, self.reason = rule, where, reason
        super().__init__(f"rule {rule!r}, {where}: {reason}")


class DecodeError(ValueError):
    """A record's bytes are not an event in the topic's format."""


# -- the model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldPath:
    """``$.a.b.0.c``: where a value sits in an event. ``optional``: written with ``?``."""

    expression: str
    parts: tuple[str, ...]
    optional: bool = False

    def lookup(self, event: Any) -> Any:
        """The value at this path, or :data:`_MISSING` (see :meth:`why_missing`)."""
        value = event
        for part in self.parts:
            value = _step(value, part)
            if value is _MISSING:
                return _MISSING
        return value

    def why_missing(self, event: Any) -> str:
        value, at = event, "$"
        for part in self.parts:
            nxt = _step(value, part)
            if nxt is _MISSING:
                if isinstance(value, Mapping):
                    return f"{self.expression} is missing: no key {part!r} at {at}"
                if isinstance(value, list):
                    count = len(value)
                    return f"{self.expression} is missing: no index {part} at {at} ({count} items)"
                return (
                    f"{self.expression} is missing: {at} is {_type_name(value)}, "
                    "not an object or list"
                )
            value, at = nxt, f"{at}.{part}"
        return f"{self.expression} is present"

    def __str__(self) -> str:
        return self.expression


@dataclass(frozen=True)
class Filter:
    path: FieldPath
    op: FilterOp
    value: Any

    def holds(self, event: Any) -> bool:
        actual = self.path.lookup(event)
        if self.op == "exists":
            return (actual is not _MISSING and actual is not None) is self.value
        if self.op == "equals":
            return _same(actual, self.value)
        if self.op == "not_equals":
            return not _same(actual, self.value)
        found = any(_same(actual, option) for option in self.value)
        return found if self.op == "in" else not found


@dataclass(frozen=True)
class StartRunAction:
    definition: str
    idempotency_key: FieldPath
    input: Any = field(default_factory=dict)
    """A template: literals, with :class:`FieldPath` where event values go."""
    version: int | None = None


@dataclass(frozen=True)
class SendSignalAction:
    definition: str
    correlation: FieldPath
    signal: str
    payload: Any = None
    """A template, like :attr:`StartRunAction.input`."""


@dataclass(frozen=True)
class Rule:
    name: str
    topic: str
    action: StartRunAction | SendSignalAction
    format: Format = "json"
    schema: Path | None = None
    when: tuple[Filter, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class RuleSet:
    """The rules of a file, and one decoder per upstream topic they read."""

    rules: tuple[Rule, ...]
    decoders: Mapping[str, EventDecoder]
    source: str = "<rules>"

    @property
    def topics(self) -> list[str]:
        return sorted(self.decoders)

    def for_topic(self, topic: str) -> list[Rule]:
        return [rule for rule in self.rules if rule.topic == topic]


# -- matching ----------------------------------------------------------------------------------


def match(rule: Rule, event: Any, *, command_id: str, issued_at_ms: int) -> list[Command]:
    """The commands ``rule`` makes of a decoded ``event``: none when a filter does not hold.

    Pure: the command id and the time come from the caller. A missing required
    value, or a key that is not a string or an integer, raises
    :class:`ExtractionError` naming the rule and the field.
    """
    if not all(f.holds(event) for f in rule.when):
        return []
    action = rule.action
    if isinstance(action, StartRunAction):
        key = _key(rule, "start_run.idempotency_key", action.idempotency_key, event)
        run_id = run_id_for(action.definition, key)
        return [
            StartRun(
                command_id=command_id,
                run_id=run_id,
                issued_at_ms=issued_at_ms,
                definition_name=action.definition,
                definition_version=action.version,
                input=_fill(rule, "start_run.input", action.input, event),
                idempotency_key=key,
                jitter_seed=_jitter_seed(run_id),
            )
        ]
    key = _key(rule, "send_signal.correlation", action.correlation, event)
    return [
        SendSignal(
            command_id=command_id,
            run_id=run_id_for(action.definition, key),
            issued_at_ms=issued_at_ms,
            name=action.signal,
            payload=_fill(rule, "send_signal.payload", action.payload, event),
            correlation_key=key,
        )
    ]


def command_id_for(rule: Rule, topic: str, partition: int, offset: int) -> str:
    """A deterministic command id: a redelivered record makes the very same command."""
    return f"trigger:{rule.name}:{topic}:{partition}:{offset}"


# -- loading ------------------------------------------------------------------------------------


def load_rules(path: str | Path) -> RuleSet:
    """Read and check a YAML rules file; Avro schemas are found relative to it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RulesError([f"not UTF-8 text (byte {exc.start})"], source=str(path)) from None
    return parse_rules(text, source=str(path), base_dir=path.parent)


def parse_rules(
    document: str | Mapping[str, Any], *, source: str = "<rules>", base_dir: Path | None = None
) -> RuleSet:
    """Parse YAML text (or its loaded mapping); raise :class:`RulesError` listing every problem."""
    if isinstance(document, str):
        try:
            document = yaml.safe_load(document)
        except yaml.YAMLError as exc:
            raise RulesError([f"not valid YAML: {exc}"], source=source) from None
    problems: list[str] = []
    if not isinstance(document, Mapping) or not isinstance(document.get("rules"), list):
        raise RulesError(["expected a mapping with a list under 'rules:'"], source=source)
    for key in document:
        if key != "rules":
            problems.append(f"unknown top-level key {key!r}{did_you_mean(str(key), ['rules'])}")
    if not document["rules"]:
        problems.append("'rules' is empty: write at least one rule")
    rules: list[Rule] = []
    names: dict[str, int] = {}
    for index, raw in enumerate(document["rules"]):
        where = _Where(f"rules[{index}]", problems)
        rule = _rule(where, raw, base_dir or Path.cwd())
        if rule is None:
            continue
        if rule.name in names:
            where.add("name", f"{rule.name!r} is also the name of rules[{names[rule.name]}]")
            continue
        names[rule.name] = index
        rules.append(rule)
    decoders = _decoders(rules, problems)
    if problems:
        raise RulesError(problems, source=source)
    return RuleSet(tuple(rules), decoders, source)


# -- decoding events ------------------------------------------------------------------------------


class EventDecoder:
    """Bytes of one upstream topic to a JSON-like event. Schemas are parsed once, here."""

    def __init__(self, format: Format, schema_path: Path | None = None) -> None:
        self.format = format
        self.schema_path = schema_path
        self.schema: Any = None
        self.fingerprint = b""
        if format == "avro":
            assert schema_path is not None
            self.schema = load_schema(str(schema_path))
            self.fingerprint = parsing_fingerprint(self.schema).to_bytes(8, "little")

    def decode(self, data: bytes | None) -> Any:
        """The event in ``data``; :class:`DecodeError` saying why when it is not one."""
        if data is None:
            raise DecodeError("the record has no value (a tombstone)")
        if self.format == "json":
            try:
                return loads(bytes(data).decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise DecodeError(f"not UTF-8 JSON: bad byte at {exc.start}") from None
            except ValueError as exc:
                raise DecodeError(f"not JSON: {exc}") from None
        return _to_json(self._decode_avro(bytes(data)))

    def _decode_avro(self, data: bytes) -> Any:
        name = self.schema.get("name", "?") if isinstance(self.schema, dict) else "?"
        framed = data[:2] == MAGIC and len(data) >= HEADER_SIZE
        if framed and data[2:HEADER_SIZE] == self.fingerprint:
            return self._read(data, HEADER_SIZE, name)
        try:  # plain Avro binary (which may happen to start with C3 01)
            return self._read(data, 0, name)
        except DecodeError:
            if not framed:
                raise
            got = int.from_bytes(data[2:HEADER_SIZE], "little")
            want = int.from_bytes(self.fingerprint, "little")
            raise DecodeError(
                f"single-object Avro with schema fingerprint 0x{got:016x}, but the rules read "
                f"this topic with {name} (0x{want:016x}, {self.schema_path}): the producer "
                "wrote with another schema"
            ) from None

    def _read(self, data: bytes, start: int, name: str) -> Any:
        buffer = BytesIO(data)
        buffer.seek(start)
        try:
            value = schemaless_reader(buffer, self.schema, None)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ...
            raise DecodeError(
                f"not Avro of {name}: {type(exc).__name__}: {exc} (at byte {buffer.tell()})"
            ) from None
        if buffer.tell() != len(data):
            raise DecodeError(
                f"not Avro of {name}: {len(data) - buffer.tell()} bytes left after the record"
            )
        return value


# -- showing rules ----------------------------------------------------------------------------


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    """A rule as plain data, in the file's own format (for ``apex triggers check --json``)."""
    out: dict[str, Any] = {"name": rule.name, "topic": rule.topic, "format": rule.format}
    if rule.schema is not None:
        out["schema"] = str(rule.schema)
    if rule.description:
        out["description"] = rule.description
    if rule.when:
        out["when"] = [{"field": f.path.expression, f.op: f.value} for f in rule.when]
    action = rule.action
    if isinstance(action, StartRunAction):
        start: dict[str, Any] = {"definition": action.definition}
        if action.version is not None:
            start["version"] = action.version
        start["input"] = _template_to_data(action.input)
        start["idempotency_key"] = action.idempotency_key.expression
        out["start_run"] = start
    else:
        out["send_signal"] = {
            "definition": action.definition,
            "correlation": action.correlation.expression,
            "signal": action.signal,
            "payload": _template_to_data(action.payload),
        }
    return out


# -- helpers: matching ---------------------------------------------------------------------------


def _step(value: Any, part: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(part, _MISSING)
    if isinstance(value, list) and part.isdigit():
        index = int(part)
        return value[index] if index < len(value) else _MISSING
    return _MISSING


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a is not _MISSING and bool(a == b)


def _key(rule: Rule, where: str, path: FieldPath, event: Any) -> str:
    value = path.lookup(event)
    if value is _MISSING or value is None:
        reason = path.why_missing(event) if value is _MISSING else f"{path} is null"
        raise ExtractionError(rule.name, where, reason)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ExtractionError(
            rule.name, where, f"{path} is {_type_name(value)}; a key must be a string or an integer"
        )
    key = str(value)
    if not key:
        raise ExtractionError(rule.name, where, f"{path} is an empty string")
    return key


def _fill(rule: Rule, where: str, template: Any, event: Any) -> Any:
    if isinstance(template, FieldPath):
        value = template.lookup(event)
        if value is _MISSING:
            if template.optional:
                return None
            raise ExtractionError(rule.name, where, template.why_missing(event))
        return value
    if isinstance(template, dict):
        out = {}
        for name, item in template.items():
            if isinstance(item, FieldPath) and item.optional and item.lookup(event) is _MISSING:
                continue
            out[name] = _fill(rule, f"{where}.{name}", item, event)
        return out
    if isinstance(template, list):
        return [_fill(rule, f"{where}.{i}", item, event) for i, item in enumerate(template)]
    return template


def _jitter_seed(run_id: str) -> int:
    """Derived from the run id, so a redelivered event makes the same StartRun."""
    return int.from_bytes(hashlib.blake2b(run_id.encode(), digest_size=8).digest(), "big") >> 1


def _to_json(value: Any) -> Any:
    """An Avro-decoded value as a JSON value: commands carry JSON inputs and payloads."""
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", str: "a string", int: "an integer", float: "a number"}
    names.update({list: "a list", dict: "an object"})
    return names.get(type(value), f"a {type(value).__name__}")


# -- helpers: parsing ---------------------------------------------------------------------------


@dataclass
class _Where:
    """Where in the file a problem is: ``rule 'x' (rules[0]), start_run.input.a: ...``."""

    label: str
    problems: list[str]

    def add(self, field_name: str, message: str) -> None:
        self.problems.append(f"{self.label}, {field_name}: {message}")


_RULE_KEYS = (
    "name",
    "topic",
    "format",
    "schema",
    "when",
    "start_run",
    "send_signal",
    "description",
)
_START_KEYS = ("definition", "version", "input", "idempotency_key")
_SIGNAL_KEYS = ("definition", "correlation", "signal", "payload")


def _rule(where: _Where, raw: Any, base_dir: Path) -> Rule | None:
    if not isinstance(raw, Mapping):
        where.add("rule", f"expected a mapping, got {_type_name(raw)}")
        return None
    count = len(where.problems)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        where.add("name", f"expected a name of letters, digits, '.', '_', '-', got {name!r}")
    else:
        where.label = f"rule {name!r} ({where.label})"
    _unknown_keys(where, "", raw, _RULE_KEYS)
    topic = raw.get("topic")
    if not isinstance(topic, str) or not _TOPIC.match(topic):
        where.add("topic", f"expected a Kafka topic name, got {topic!r}")
    fmt = raw.get("format", "json")
    schema: Path | None = None
    if fmt not in ("json", "avro"):
        where.add("format", f"expected 'json' or 'avro', got {fmt!r}")
    elif fmt == "avro":
        schema = _schema_path(where, raw.get("schema"), base_dir)
    elif "schema" in raw:
        where.add("schema", "only an Avro rule has a schema: add 'format: avro' or remove it")
    when = _filters(where, raw.get("when"))
    description = raw.get("description", "")
    if not isinstance(description, str):
        where.add("description", f"expected text, got {_type_name(description)}")
    action = _action(where, raw)
    if len(where.problems) > count or action is None:
        return None
    assert isinstance(name, str) and isinstance(topic, str)  # checked above
    return Rule(name, topic, action, fmt, schema, when, description)


def _action(where: _Where, raw: Mapping[str, Any]) -> StartRunAction | SendSignalAction | None:
    if ("start_run" in raw) == ("send_signal" in raw):
        where.add("start_run/send_signal", "a rule has exactly one of 'start_run' or 'send_signal'")
        return None
    if "start_run" in raw:
        doc = _section(where, "start_run", raw["start_run"], _START_KEYS)
        if doc is None:
            return None
        definition = _text(where, "start_run.definition", doc.get("definition"))
        version = doc.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)
                                    or version < 1):  # fmt: skip
            where.add("start_run.version", f"expected a version number >= 1, got {version!r}")
        key = _required_path(where, "start_run.idempotency_key", doc.get("idempotency_key"),
                             "so that a business event delivered twice starts one run")  # fmt: skip
        template = _template(where, "start_run.input", doc.get("input", {}))
        if definition is None or key is None:
            return None
        return StartRunAction(definition, key, template, version)
    doc = _section(where, "send_signal", raw["send_signal"], _SIGNAL_KEYS)
    if doc is None:
        return None
    definition = _text(where, "send_signal.definition", doc.get("definition"))
    signal = _text(where, "send_signal.signal", doc.get("signal"))
    key = _required_path(where, "send_signal.correlation", doc.get("correlation"),
                         "it is the key the run was started with")  # fmt: skip
    payload = _template(where, "send_signal.payload", doc.get("payload"))
    if definition is None or signal is None or key is None:
        return None
    return SendSignalAction(definition, key, signal, payload)


def _section(
    where: _Where, name: str, value: Any, keys: tuple[str, ...]
) -> Mapping[str, Any] | None:
    if not isinstance(value, Mapping):
        where.add(name, f"expected a mapping, got {_type_name(value)}")
        return None
    _unknown_keys(where, f"{name}.", value, keys)
    return value


def _unknown_keys(where: _Where, prefix: str, doc: Mapping[str, Any], keys: Iterable[str]) -> None:
    keys = tuple(keys)
    for key in doc:
        if key not in keys:
            where.add(f"{prefix}{key}", f"unknown field{did_you_mean(str(key), keys)}")


def _text(where: _Where, name: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        where.add(name, f"required: expected non-empty text, got {value!r}")
        return None
    return value


def _required_path(where: _Where, name: str, value: Any, why: str) -> FieldPath | None:
    if value is None:
        where.add(name, f"required: a field path like $.order.id ({why})")
        return None
    path = _path(where, name, value)
    if path is not None and path.optional:
        where.add(name, f"{value!r}: a key cannot be optional ('?')")
        return None
    return path


def _path(where: _Where, name: str, value: Any) -> FieldPath | None:
    if not isinstance(value, str) or not (value == "$" or value.startswith("$.")):
        where.add(name, f"expected a field path like $.order.id, got {value!r}")
        return None
    optional = value.endswith("?")
    body = value[:-1] if optional else value
    parts = tuple(body.split(".")[1:])
    if any(not part or part != part.strip() for part in parts):
        where.add(name, f"{value!r}: a path is '$' then '.key' or '.index' parts, none empty")
        return None
    return FieldPath(value, parts, optional)


def _template(where: _Where, name: str, value: Any) -> Any:
    if isinstance(value, str):
        if value.startswith("$$"):
            return value[1:]
        if value.startswith("$"):
            return _path(where, name, value)
        return value
    if isinstance(value, Mapping):
        return {str(k): _template(where, f"{name}.{k}", v) for k, v in value.items()}
    if isinstance(value, list):
        return [_template(where, f"{name}.{i}", v) for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float):
        return value
    where.add(name, f"{_type_name(value)} is not a JSON value; quote it")
    return None


def _filters(where: _Where, value: Any) -> tuple[Filter, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    filters = []
    for i, item in enumerate(items):
        name = f"when[{i}]" if isinstance(value, list) else "when"
        if not isinstance(item, Mapping):
            where.add(name, f"expected {{field: $.x, equals: value}}, got {item!r}")
            continue
        _unknown_keys(where, f"{name}.", item, ("field", *FILTER_OPS))
        ops = [op for op in FILTER_OPS if op in item]
        path = _path(where, f"{name}.field", item.get("field"))
        if len(ops) != 1:
            where.add(name, f"expected exactly one of {', '.join(FILTER_OPS)}; got {ops or 'none'}")
            continue
        op, expected = ops[0], item[ops[0]]
        if op in ("in", "not_in") and not isinstance(expected, list):
            where.add(f"{name}.{op}", f"expected a list, got {expected!r}")
            continue
        if op == "exists" and not isinstance(expected, bool):
            where.add(f"{name}.exists", f"expected true or false, got {expected!r}")
            continue
        if path is not None:
            filters.append(Filter(path, op, expected))
    return tuple(filters)


def _schema_path(where: _Where, value: Any, base_dir: Path) -> Path | None:
    if not isinstance(value, str) or not value:
        where.add("schema", "an Avro rule needs 'schema: path/to/writer.avsc'")
        return None
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        where.add("schema", f"no such file {path}")
        return None
    return path


def _decoders(rules: Sequence[Rule], problems: list[str]) -> dict[str, EventDecoder]:
    """One decoder per topic; rules that read a topic differently are refused."""
    first: dict[str, Rule] = {}
    decoders: dict[str, EventDecoder] = {}
    for rule in rules:
        seen = first.setdefault(rule.topic, rule)
        if seen is not rule:
            if (seen.format, seen.schema) != (rule.format, rule.schema):
                problems.append(
                    f"rule {rule.name!r}, format/schema: topic {rule.topic!r} is read as "
                    f"{_shown_format(rule)} here but as {_shown_format(seen)} by rule "
                    f"{seen.name!r}: one topic has one format"
                )
            continue
        try:
            decoders[rule.topic] = EventDecoder(rule.format, rule.schema)
        except Exception as exc:  # fastavro: SchemaParseException, UnknownType, JSON errors
            problems.append(f"rule {rule.name!r}, schema: cannot load {rule.schema}: {exc}")
    return decoders


def _shown_format(rule: Rule) -> str:
    return f"avro ({rule.schema})" if rule.format == "avro" else rule.format


def _template_to_data(template: Any) -> Any:
    if isinstance(template, FieldPath):
        return template.expression
    if isinstance(template, dict):
        return {k: _template_to_data(v) for k, v in template.items()}
    if isinstance(template, list):
        return [_template_to_data(v) for v in template]
    if isinstance(template, str) and template.startswith("$"):
        return "$" + template
    return template
