"""The documented dict format of a workflow definition, both ways.

This is what a YAML or JSON file decodes to (file handling lives outside the
pure core, in :mod:`apex.definition_files`; the JSON Schema for editors is
``schemas/definition.schema.json``)::

    name: ticket_triage                  # required, string
    version: 1                           # required, integer >= 1
    description: ...                     # optional
    input:                               # the run's input contract
      text: string                       #   field: type
      customer: {type: object, required: false}
    outputs:                             # optional; name: reference to an output
      queue: $.steps.route.output.queue
    failure_policy: fail_fast            # or continue
    timeout_ms: 3600000                  # optional, the whole run
    steps:
      - id: parse                        # required, [A-Za-z_][A-Za-z0-9_-]*
        capability: parse                # required, the agents that run it
        inputs:                          # name: literal or reference
          text: $.input.text
          labels: [bug, billing]
        depends_on: [other_step]
        retry: {max_attempts: 3, initial_backoff_ms: 1000, max_backoff_ms: 60000,
                multiplier: 2.0, jitter: 0.1}
        timeout_ms: 30000                # one attempt
        condition: {ref: $.input.lang, op: eq, value: en}   # skip when false
        approval: {when: before, deadline_ms: 86400000, condition: {...}}
        wait_for_signal: {name: paid, correlation: $.input.order_id, deadline_ms: 60000}
        output: {doc: object}            # the step's output contract
        publish: true                    # put its result on apex.results

Types are ``string``, ``integer``, ``number``, ``boolean``, ``object``,
``array`` and ``any``. Condition ops are ``eq ne in not_in gt ge lt le truthy
falsy exists``; ``in``/``not_in`` take a list.

References and literals: a string that starts with ``$.`` is a reference
(``$.input.<field>...`` or ``$.steps.<id>.output[.<field>...]``), also inside
lists and mappings of a step's inputs. To pass a literal string that starts
with ``$.``, double the dollar: ``$$.x`` means the string ``$.x`` (and
``$$$.x`` means ``$$.x``). Condition values are always literals; there a
``$.`` string is refused rather than silently compared as text.

Null: an optional key set to null means the same as leaving it out (YAML
writes ``timeout_ms:`` with no value as null).

:func:`definition_to_dict` writes the canonical form: keys in the order above,
values equal to their defaults left out, ``field: type`` for a required field,
and it round-trips exactly: ``definition_from_dict(definition_to_dict(d)) == d``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, TypeVar

from apex.domain.definitions import (
    JSON,
    ApprovalGate,
    Condition,
    ConditionOp,
    Contract,
    FailurePolicy,
    FieldSpec,
    FieldType,
    GateWhen,
    Ref,
    RetryPolicy,
    SignalWait,
    StepDefinition,
    WorkflowDefinition,
    parse_ref,
)
from apex.domain.errors import DefinitionError, Problem, did_you_mean

FORMAT_KEYS: Mapping[str, tuple[str, ...]] = {
    "workflow": (
        "name", "version", "description", "input", "outputs",
        "failure_policy", "timeout_ms", "steps",
    ),
    "step": (
        "id", "capability", "inputs", "depends_on", "retry", "timeout_ms",
        "condition", "approval", "wait_for_signal", "output", "publish",
    ),
    "retry": ("max_attempts", "initial_backoff_ms", "max_backoff_ms", "multiplier", "jitter"),
    "condition": ("ref", "op", "value"),
    "approval": ("when", "deadline_ms", "condition"),
    "wait_for_signal": ("name", "correlation", "deadline_ms"),
    "field": ("type", "required"),
}  # fmt: skip
"""The keys each mapping of the format accepts; the JSON Schema must list the same."""

REQUIRED_KEYS: Mapping[str, tuple[str, ...]] = {
    "workflow": ("name", "version", "steps"),
    "step": ("id", "capability"),
    "retry": (),
    "condition": ("ref", "op"),
    "approval": ("when",),
    "wait_for_signal": ("name",),
    "field": ("type",),
}


def definition_from_dict(data: Mapping[str, Any]) -> WorkflowDefinition:
    """Read a definition in the documented format; raise :class:`DefinitionError`.

    Every structural problem (wrong type, unknown or missing key, unparsable
    reference) is collected. Meaning (cycles, unknown steps...) is checked by
    :func:`apex.domain.validation.validate`.
    """
    problems: list[Problem] = []
    root = _Where(problems, None, "")
    doc = _section(root, data, "workflow")
    if doc is None:
        raise DefinitionError(problems)
    definition = WorkflowDefinition(
        name=_need(root, doc, "name", _text, ""),
        version=_need(root, doc, "version", _integer, 0),
        description=_get(root, doc, "description", _text, ""),
        input=_get(root, doc, "input", _contract, {}),
        outputs=_get(root, doc, "outputs", _outputs, {}),
        failure_policy=_get(root, doc, "failure_policy", _FAILURE_POLICY, FailurePolicy.FAIL_FAST),
        timeout_ms=_get(root, doc, "timeout_ms", _integer, None),
        steps=_need(root, doc, "steps", _steps, ()),
    )
    if problems:
        raise DefinitionError(problems)
    return definition


def definition_to_dict(defn: WorkflowDefinition) -> dict[str, Any]:
    """The canonical, JSON-serialisable form of ``defn`` (defaults left out)."""
    out: dict[str, Any] = {"name": defn.name, "version": defn.version}
    if defn.description:
        out["description"] = defn.description
    if defn.input:
        out["input"] = _contract_to_dict(defn.input)
    if defn.outputs:
        out["outputs"] = {name: ref.expression for name, ref in defn.outputs.items()}
    if defn.failure_policy != FailurePolicy.FAIL_FAST:
        out["failure_policy"] = FailurePolicy(defn.failure_policy).value
    if defn.timeout_ms is not None:
        out["timeout_ms"] = defn.timeout_ms
    out["steps"] = [_step_to_dict(step) for step in defn.steps]
    return out


# -- reading: where a problem is, and the generic readers --------------------------

T = TypeVar("T")
D = TypeVar("D")
_ESCAPED_LITERAL = re.compile(r"^\$\$+\.")
_NEEDS_ESCAPE = re.compile(r"^\$+\.")


class _Invalid(Exception):
    """A value is wrong as a whole; the message says how."""


@dataclass(frozen=True, slots=True)
class _Where:
    problems: list[Problem]
    step_id: str | None
    field: str

    def at(self, key: str | int) -> _Where:
        if isinstance(key, int):
            return _Where(self.problems, self.step_id, f"{self.field}[{key}]")
        return _Where(self.problems, self.step_id, f"{self.field}.{key}" if self.field else key)

    def problem(self, message: str) -> None:
        self.problems.append(Problem(self.step_id, self.field, message))


Reader = Callable[[_Where, Any], T]


def _section(where: _Where, value: Any, section: str) -> Mapping[str, Any] | None:
    """``value`` as a mapping of ``section``'s keys; unknown and missing keys reported."""
    if not isinstance(value, Mapping):
        where.problem(f"must be a mapping, got {_kind(value)}")
        return None
    allowed = FORMAT_KEYS[section]
    for key in value:
        if not isinstance(key, str):
            where.problem(f"keys must be strings, got {key!r}")
        elif key not in allowed:
            hint = did_you_mean(key, allowed) or f"; allowed keys: {', '.join(allowed)}"
            where.problem(f"unknown key {key!r}{hint}")
    for key in REQUIRED_KEYS[section]:
        if key not in value:
            where.problem(f"missing required key {key!r}")
    return value


def _get(where: _Where, doc: Mapping[str, Any], key: str, read: Reader[T], default: D) -> T | D:
    """An optional key: ``default`` when absent or null."""
    if doc.get(key) is None:
        return default
    return _read(where.at(key), doc[key], read, default)


def _need(where: _Where, doc: Mapping[str, Any], key: str, read: Reader[T], default: D) -> T | D:
    """A required key (its absence is already reported by :func:`_section`)."""
    if key not in doc:
        return default
    return _read(where.at(key), doc[key], read, default)


def _read(where: _Where, value: Any, read: Reader[T], default: D) -> T | D:
    try:
        return read(where, value)
    except _Invalid as invalid:
        where.problem(str(invalid))
        return default


def _text(where: _Where, value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, got {_kind(value)}")
    return value


def _integer(where: _Where, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"must be an integer, got {_kind(value)}")
    return value


def _number(where: _Where, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Invalid(f"must be a finite number, got {_kind(value)}")
    return float(value)


def _boolean(where: _Where, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {_kind(value)}")
    return value


E = TypeVar("E", bound=Enum)


def _enum(kind: type[E]) -> Reader[E]:
    choices = [str(member.value) for member in kind]

    def read(where: _Where, value: Any) -> E:
        if isinstance(value, str) and value in choices:
            return kind(value)
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        shown = repr(value) if isinstance(value, str) else _kind(value)
        raise _Invalid(f"must be one of {', '.join(choices)}; got {shown}{hint}")

    return read


_FAILURE_POLICY = _enum(FailurePolicy)
_CONDITION_OP = _enum(ConditionOp)
_GATE_WHEN = _enum(GateWhen)
_FIELD_TYPE = _enum(FieldType)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _Invalid(f"must be a mapping of {what}, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _Invalid(f"keys must be strings, got {key!r}")
    return value


# -- reading the parts of a definition ----------------------------------------------


def _steps(where: _Where, value: Any) -> tuple[StepDefinition, ...]:
    if not isinstance(value, list | tuple):
        raise _Invalid(f"must be a list of steps, got {_kind(value)}")
    return tuple(_step(where, index, raw) for index, raw in enumerate(value))


def _step(root: _Where, index: int, raw: Any) -> StepDefinition:
    step_id = raw.get("id") if isinstance(raw, Mapping) else None
    where = _Where(root.problems, step_id, "") if isinstance(step_id, str) else root.at(index)
    doc = _section(where, raw, "step")
    if doc is None:
        return StepDefinition(id="", capability="")
    return StepDefinition(
        id=_need(where, doc, "id", _text, ""),
        capability=_need(where, doc, "capability", _text, ""),
        inputs=_get(where, doc, "inputs", _inputs, {}),
        depends_on=_get(where, doc, "depends_on", _step_ids, ()),
        retry=_get(where, doc, "retry", _retry, RetryPolicy()),
        timeout_ms=_get(where, doc, "timeout_ms", _integer, None),
        condition=_get(where, doc, "condition", _condition, None),
        approval=_get(where, doc, "approval", _approval, None),
        wait_for_signal=_get(where, doc, "wait_for_signal", _signal_wait, None),
        output=_get(where, doc, "output", _contract, None),
        publish=_get(where, doc, "publish", _boolean, False),
    )


def _inputs(where: _Where, value: Any) -> dict[str, JSON | Ref]:
    inputs = _mapping(value, "input names to literals or references")
    return {name: _value(where.at(name), item, refs=True) for name, item in inputs.items()}


def _step_ids(where: _Where, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        raise _Invalid(f"must be a list of step ids; write [{value}]")
    if not isinstance(value, list | tuple):
        raise _Invalid(f"must be a list of step ids, got {_kind(value)}")
    return tuple(_read(where.at(i), item, _text, "") for i, item in enumerate(value))


def _retry(where: _Where, value: Any) -> RetryPolicy:
    doc = _section(where, value, "retry")
    if doc is None:
        return RetryPolicy()
    default = RetryPolicy()
    return RetryPolicy(
        max_attempts=_get(where, doc, "max_attempts", _integer, default.max_attempts),
        initial_backoff_ms=_get(
            where, doc, "initial_backoff_ms", _integer, default.initial_backoff_ms
        ),
        max_backoff_ms=_get(where, doc, "max_backoff_ms", _integer, default.max_backoff_ms),
        multiplier=_get(where, doc, "multiplier", _number, default.multiplier),
        jitter=_get(where, doc, "jitter", _number, default.jitter),
    )


def _condition(where: _Where, value: Any) -> Condition | None:
    doc = _section(where, value, "condition")
    if doc is None:
        return None
    ref = _need(where, doc, "ref", _reference, None)
    op = _need(where, doc, "op", _CONDITION_OP, None)
    literal = _get(where, doc, "value", _literal, None)
    return None if ref is None or op is None else Condition(ref, op, literal)


def _approval(where: _Where, value: Any) -> ApprovalGate | None:
    doc = _section(where, value, "approval")
    if doc is None:
        return None
    when = _need(where, doc, "when", _GATE_WHEN, None)
    deadline_ms = _get(where, doc, "deadline_ms", _integer, None)
    condition = _get(where, doc, "condition", _condition, None)
    return None if when is None else ApprovalGate(when, deadline_ms, condition)


def _signal_wait(where: _Where, value: Any) -> SignalWait | None:
    doc = _section(where, value, "wait_for_signal")
    if doc is None:
        return None
    name = _need(where, doc, "name", _text, "")
    correlation = _get(where, doc, "correlation", _correlation, None)
    return SignalWait(name, correlation, _get(where, doc, "deadline_ms", _integer, None))


def _correlation(where: _Where, value: Any) -> Ref | str | None:
    if not isinstance(value, str):
        raise _Invalid(f"must be a reference or a literal string, got {_kind(value)}")
    parsed = _value(where, value, refs=True)
    return parsed if isinstance(parsed, Ref | str) else None


def _contract(where: _Where, value: Any) -> dict[str, FieldSpec]:
    fields_ = _mapping(value, "field names to types")
    return {
        name: _read(where.at(name), spec, _field_spec, FieldSpec())
        for name, spec in fields_.items()
    }


def _field_spec(where: _Where, value: Any) -> FieldSpec:
    if isinstance(value, str):
        return FieldSpec(_FIELD_TYPE(where, value))
    doc = _section(where, value, "field") if isinstance(value, Mapping) else None
    if doc is None:
        types = ", ".join(t.value for t in FieldType)
        raise _Invalid(f"must be a type ({types}) or {{type, required}}, got {_kind(value)}")
    return FieldSpec(
        type=_need(where, doc, "type", _FIELD_TYPE, FieldType.ANY),
        required=_get(where, doc, "required", _boolean, True),
    )


def _outputs(where: _Where, value: Any) -> dict[str, Ref]:
    outputs = _mapping(value, "output names to references")
    refs = {name: _read(where.at(name), ref, _reference, None) for name, ref in outputs.items()}
    return {name: ref for name, ref in refs.items() if ref is not None}


def _reference(where: _Where, value: Any) -> Ref:
    shape = "'$.input.<field>' or '$.steps.<step id>.output.<field>'"
    if not isinstance(value, str) or not value.startswith("$."):
        shown = repr(value) if isinstance(value, str) else _kind(value)
        raise _Invalid(f"must be a reference like {shape}, got {shown}")
    try:
        return parse_ref(value)
    except ValueError as error:
        raise _Invalid(str(error)) from None


def _literal(where: _Where, value: Any) -> JSON:
    return _value(where, value, refs=False)


def _value(where: _Where, value: Any, *, refs: bool) -> JSON | Ref:
    """A JSON value; with ``refs``, ``$.`` strings (also nested) become :class:`Ref`."""
    if isinstance(value, str):
        if value.startswith("$."):
            escape = f"to mean the literal string, write '${value}'"
            if not refs:
                where.problem(f"{value!r} is a reference, but only literals go here; {escape}")
                return value
            try:
                return parse_ref(value)
            except ValueError as error:
                where.problem(f"{error}; {escape}")
                return value
        return value[1:] if _ESCAPED_LITERAL.match(value) else value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            where.problem(f"{value} is not representable in JSON; use a finite number")
        return value
    if isinstance(value, list | tuple):
        return [_value(where.at(i), item, refs=refs) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                where.problem(f"keys must be strings, got {key!r}")
        items = ((k, v) for k, v in value.items() if isinstance(k, str))
        return {k: _value(where.at(k), v, refs=refs) for k, v in items}
    where.problem(f"{_kind(value)} is not a JSON value; quote it to pass it as a string")
    return None


def _kind(value: Any) -> str:
    """How a value is named in a message: its JSON kind, or its Python type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__} ({value})"


# -- writing --------------------------------------------------------------------------


def _step_to_dict(step: StepDefinition) -> dict[str, Any]:
    out: dict[str, Any] = {"id": step.id, "capability": step.capability}
    if step.inputs:
        out["inputs"] = {name: _value_to_json(item) for name, item in step.inputs.items()}
    if step.depends_on:
        out["depends_on"] = list(step.depends_on)
    retry = _retry_to_dict(step.retry)
    if retry:
        out["retry"] = retry
    if step.timeout_ms is not None:
        out["timeout_ms"] = step.timeout_ms
    if step.condition is not None:
        out["condition"] = _condition_to_dict(step.condition)
    if step.approval is not None:
        out["approval"] = _approval_to_dict(step.approval)
    if step.wait_for_signal is not None:
        out["wait_for_signal"] = _signal_wait_to_dict(step.wait_for_signal)
    if step.output is not None:
        out["output"] = _contract_to_dict(step.output)
    if step.publish:
        out["publish"] = True
    return out


def _retry_to_dict(retry: RetryPolicy) -> dict[str, Any]:
    default = RetryPolicy()
    out: dict[str, Any] = {}
    for spec in fields(RetryPolicy):
        value = getattr(retry, spec.name)
        if value != getattr(default, spec.name):
            out[spec.name] = float(value) if spec.name in ("multiplier", "jitter") else value
    return out


def _condition_to_dict(condition: Condition) -> dict[str, Any]:
    out: dict[str, Any] = {"ref": condition.ref.expression, "op": ConditionOp(condition.op).value}
    if condition.value is not None:
        out["value"] = _value_to_json(condition.value)
    return out


def _approval_to_dict(gate: ApprovalGate) -> dict[str, Any]:
    out: dict[str, Any] = {"when": GateWhen(gate.when).value}
    if gate.deadline_ms is not None:
        out["deadline_ms"] = gate.deadline_ms
    if gate.condition is not None:
        out["condition"] = _condition_to_dict(gate.condition)
    return out


def _signal_wait_to_dict(wait: SignalWait) -> dict[str, Any]:
    out: dict[str, Any] = {"name": wait.name}
    if wait.correlation is not None:
        out["correlation"] = _value_to_json(wait.correlation)
    if wait.deadline_ms is not None:
        out["deadline_ms"] = wait.deadline_ms
    return out


def _contract_to_dict(contract: Contract) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in contract.items():
        kind = FieldType(spec.type).value
        out[name] = kind if spec.required else {"type": kind, "required": False}
    return out


def _value_to_json(value: JSON | Ref) -> JSON:
    """A literal with ``$.`` strings escaped, references as ``$.`` strings."""
    if isinstance(value, Ref):
        return value.expression
    if isinstance(value, str):
        return f"${value}" if _NEEDS_ESCAPE.match(value) else value
    if isinstance(value, list | tuple):
        return [_value_to_json(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _value_to_json(item) for key, item in value.items()}
    return value
