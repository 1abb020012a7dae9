"""Small pure rules the decider applies: references, conditions, contracts, backoff."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from apex.domain.definitions import (
    JSON,
    Condition,
    ConditionOp,
    Contract,
    FieldType,
    Ref,
    RetryPolicy,
)

_MISSING: Any = object()


def resolve(ref: Ref, run_input: JSON, outputs: Mapping[str, JSON]) -> JSON:
    """The value a reference points at, or ``None`` where the path does not exist.

    A skipped upstream step has no output: references into it resolve to ``None``.
    """
    value = _lookup(ref, run_input, outputs)
    return None if value is _MISSING else value


def resolve_inputs(
    inputs: Mapping[str, JSON | Ref], run_input: JSON, outputs: Mapping[str, JSON]
) -> dict[str, JSON]:
    """A step's input with every reference (also inside list/dict literals) resolved."""
    resolved = {}
    for name, value in inputs.items():
        if type(value) is Ref:  # most inputs: one reference, looked up without the recursion
            value = _lookup(value, run_input, outputs)
            resolved[name] = None if value is _MISSING else value
        else:
            resolved[name] = _materialise(value, run_input, outputs)
    return resolved


def holds(condition: Condition, run_input: JSON, outputs: Mapping[str, JSON]) -> bool:
    """Whether a condition is true. A comparison between incomparable values is false."""
    value = _lookup(condition.ref, run_input, outputs)
    op, expected = condition.op, condition.value
    if op is ConditionOp.EXISTS:
        return value is not _MISSING and value is not None
    if value is _MISSING:
        value = None
    if op is ConditionOp.TRUTHY:
        return bool(value)
    if op is ConditionOp.FALSY:
        return not value
    if op is ConditionOp.EQ:
        return bool(value == expected)
    if op is ConditionOp.NE:
        return bool(value != expected)
    if op is ConditionOp.IN:
        return isinstance(expected, list | tuple) and value in expected
    if op is ConditionOp.NOT_IN:
        return isinstance(expected, list | tuple) and value not in expected
    try:
        if op is ConditionOp.GT:
            return bool(value > expected)
        if op is ConditionOp.GE:
            return bool(value >= expected)
        if op is ConditionOp.LT:
            return bool(value < expected)
        if op is ConditionOp.LE:
            return bool(value <= expected)
    except TypeError:
        return False
    raise AssertionError(f"unhandled condition op {op}")


def contract_violations(contract: Contract, value: JSON) -> list[str]:
    """What in ``value`` breaks ``contract`` (empty when it conforms)."""
    # ``type is dict`` first: the ``Mapping`` check is an ABC's, ten times slower.
    if type(value) is not dict and not isinstance(value, Mapping):
        return [f"expected an object with fields {sorted(contract)}, got {_type_name(value)}"]
    problems = []
    for name, spec in contract.items():
        if name not in value or value[name] is None:
            if spec.required:
                problems.append(f"missing required field {name!r}")
            continue
        if not _is_type(value[name], spec.type):
            problems.append(
                f"field {name!r} should be {spec.type.value}, got {_type_name(value[name])}"
            )
    return problems


def backoff_ms(policy: RetryPolicy, failed_attempt: int, seed: int, step_id: str) -> int:
    """Delay before the attempt after ``failed_attempt`` (1-based).

    ``initial * multiplier**(failed_attempt-1)``, capped at ``max_backoff_ms``,
    then scaled by a factor in ``[1 - jitter, 1]`` drawn from the run's seed —
    deterministic, so replaying the log recomputes the same delay.
    """
    base = policy.initial_backoff_ms * policy.multiplier ** (failed_attempt - 1)
    delay = min(float(policy.max_backoff_ms), base)
    if policy.jitter > 0:
        delay *= 1.0 - policy.jitter * _unit(seed, step_id, failed_attempt)
    return max(1, int(delay))


def _unit(seed: int, step_id: str, attempt: int) -> float:
    """A number in [0, 1) from (seed, step, attempt): splitmix64, no global RNG."""
    x = (seed ^ (zlib.crc32(step_id.encode()) << 16) ^ attempt) & 0xFFFFFFFFFFFFFFFF
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    return (x >> 11) / float(1 << 53)


# -- helpers -------------------------------------------------------------------------


def _lookup(ref: Ref, run_input: JSON, outputs: Mapping[str, JSON]) -> JSON:
    value = run_input if ref.source == "input" else outputs.get(ref.step_id or "", _MISSING)
    for key in ref.path:
        # ``type is dict`` first: the ``Mapping`` check is an ABC's, ten times slower.
        if (type(value) is dict or isinstance(value, Mapping)) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return _MISSING
    return value


def _materialise(value: JSON | Ref, run_input: JSON, outputs: Mapping[str, JSON]) -> JSON:
    if isinstance(value, Ref):
        return resolve(value, run_input, outputs)
    if isinstance(value, Mapping):
        return {k: _materialise(v, run_input, outputs) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_materialise(v, run_input, outputs) for v in value]
    return value


def _is_type(value: JSON, field_type: FieldType) -> bool:
    if field_type is _ANY:
        return True
    if field_type is _STRING:
        return isinstance(value, str)
    if field_type is _BOOLEAN:
        return isinstance(value, bool)
    if field_type is _INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if field_type is _NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if field_type is _OBJECT:
        return isinstance(value, Mapping)
    return isinstance(value, list)


# ``FieldType.X`` costs ~300 ns (``EnumType.__getattr__`` takes enum class lookups
# off CPython's fast path); a run's input is checked on every start.
_ANY, _STRING, _BOOLEAN, _INTEGER, _NUMBER, _OBJECT = (
    FieldType.ANY,
    FieldType.STRING,
    FieldType.BOOLEAN,
    FieldType.INTEGER,
    FieldType.NUMBER,
    FieldType.OBJECT,
)


def _type_name(value: JSON) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    return "array" if isinstance(value, list) else type(value).__name__
