"""Workflow definitions: a DAG of steps, each run by an agent capability.

Plain frozen dataclasses; parsing from YAML/JSON lives in
:mod:`apex.domain.definition_format`, validation in :mod:`apex.domain.validation`,
the typed builder in :mod:`apex.domain.builder`.

Values that flow between steps are JSON values. A step input is either a
literal or a reference (:class:`Ref`) into the run input (``$.input.x``) or an
upstream step's output (``$.steps.<id>.output.y``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

JSON: TypeAlias = Any
"""A JSON value: None, bool, int, float, str, list of JSON, dict of str to JSON."""


class FieldType(StrEnum):
    """Types a contract can declare for one field."""

    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    OBJECT = "object"
    ARRAY = "array"
    ANY = "any"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    type: FieldType = FieldType.ANY
    required: bool = True


Contract: TypeAlias = Mapping[str, FieldSpec]
"""Named fields of a step's input, output, or a run's input."""


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference to a value of the run: ``$.input.a.b`` or ``$.steps.s.output.a``.

    ``source`` is ``"input"`` or ``"steps"``; for a step reference ``step_id``
    names the step and ``path`` is the path inside its output (may be empty:
    the whole output).
    """

    source: str
    path: tuple[str, ...]
    step_id: str | None = None

    @property
    def expression(self) -> str:
        if self.source == "input":
            return ".".join(("$", "input", *self.path))
        return ".".join(("$", "steps", self.step_id or "", "output", *self.path))

    def __str__(self) -> str:
        return self.expression


class ConditionOp(StrEnum):
    EQ = "eq"
    NE = "ne"
    IN = "in"
    NOT_IN = "not_in"
    GT = "gt"
    GE = "ge"
    LT = "lt"
    LE = "le"
    TRUTHY = "truthy"
    FALSY = "falsy"
    EXISTS = "exists"


@dataclass(frozen=True, slots=True)
class Condition:
    """Run the step only when ``ref <op> value`` holds; otherwise skip it."""

    ref: Ref
    op: ConditionOp
    value: JSON = None


class GateWhen(StrEnum):
    BEFORE = "before"
    AFTER = "after"


@dataclass(frozen=True, slots=True)
class ApprovalGate:
    """A human must approve the step, before dispatch or after its success.

    With ``condition`` set, approval is only asked when the condition holds
    (e.g. only for high-priority tickets). ``deadline_ms`` counts from the
    request; at the deadline the approval counts as rejected.
    """

    when: GateWhen
    deadline_ms: int | None = None
    condition: Condition | None = None


@dataclass(frozen=True, slots=True)
class SignalWait:
    """The step waits, before dispatch, for a named signal.

    ``correlation`` (a :class:`Ref` or literal) must equal the signal's
    correlation key when both are given. ``deadline_ms`` counts from when the
    step starts waiting; at the deadline the step fails (not retried).
    """

    name: str
    correlation: Ref | str | None = None
    deadline_ms: int | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and exponential backoff: ``initial * multiplier**(n-1)``, capped.

    ``jitter`` is a fraction in [0, 1]: the backoff is scaled by a factor drawn
    deterministically in ``[1 - jitter, 1]`` from the run's jitter seed.
    """

    max_attempts: int = 1
    initial_backoff_ms: int = 1_000
    max_backoff_ms: int = 60_000
    multiplier: float = 2.0
    jitter: float = 0.0


class FailurePolicy(StrEnum):
    FAIL_FAST = "fail_fast"
    """The first step failure fails the run; pending steps are cancelled."""
    CONTINUE = "continue"
    """Finish every step that can still run, then fail the run."""


@dataclass(frozen=True, slots=True)
class StepDefinition:
    id: str
    capability: str
    inputs: Mapping[str, JSON | Ref] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    retry: RetryPolicy = RetryPolicy()
    timeout_ms: int | None = None
    condition: Condition | None = None
    approval: ApprovalGate | None = None
    wait_for_signal: SignalWait | None = None
    output: Contract | None = None
    """The step's output contract; ``None`` means undeclared (not checked)."""
    publish: bool = False
    """Publish this step's result on ``apex.results``."""


@dataclass(frozen=True, slots=True)
class WorkflowDefinition:
    name: str
    version: int
    steps: tuple[StepDefinition, ...]
    input: Contract = field(default_factory=dict)
    outputs: Mapping[str, Ref] = field(default_factory=dict)
    """The run's outputs; empty means every sink step's output, by step id."""
    failure_policy: FailurePolicy = FailurePolicy.FAIL_FAST
    timeout_ms: int | None = None
    description: str = ""

    @property
    def key(self) -> str:
        """``name@version``: the key on ``apex.definitions``."""
        return f"{self.name}@{self.version}"

    def step(self, step_id: str) -> StepDefinition:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(f"workflow {self.key} has no step {step_id!r}")

    def step_refs(self, step: StepDefinition) -> tuple[Ref, ...]:
        """Every reference a step reads: inputs, condition, gate condition, signal."""
        refs: list[Ref] = [v for v in step.inputs.values() if isinstance(v, Ref)]
        refs.extend(_refs_in_literals(step.inputs.values()))
        if step.condition is not None:
            refs.append(step.condition.ref)
        if step.approval is not None and step.approval.condition is not None:
            refs.append(step.approval.condition.ref)
        if step.wait_for_signal is not None and isinstance(step.wait_for_signal.correlation, Ref):
            refs.append(step.wait_for_signal.correlation)
        return tuple(refs)


def _refs_in_literals(values: Any) -> list[Ref]:
    """References nested inside list/dict literals of step inputs."""
    found: list[Ref] = []
    for value in values:
        if isinstance(value, Ref):
            continue
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, Ref):
                found.append(item)
            elif isinstance(item, Mapping):
                stack.extend(item.values())
            elif isinstance(item, list | tuple):
                stack.extend(item)
    return found


def parse_ref(expression: str) -> Ref:
    """Parse ``$.input.a.b`` or ``$.steps.<id>.output[.a.b]``; raise ``ValueError``."""
    parts = expression.split(".")
    if len(parts) < 2 or parts[0] != "$":
        raise ValueError(f"{expression!r} is not a reference: it must start with '$.'")
    if any(p == "" for p in parts):
        raise ValueError(f"{expression!r} has an empty path segment")
    if parts[1] == "input":
        return Ref("input", tuple(parts[2:]))
    if parts[1] == "steps":
        if len(parts) < 4 or parts[3] != "output":
            raise ValueError(
                f"{expression!r}: a step reference reads '$.steps.<step id>.output[.field...]'"
            )
        return Ref("steps", tuple(parts[4:]), step_id=parts[2])
    raise ValueError(
        f"{expression!r}: a reference reads '$.input...' or '$.steps.<step id>.output...'"
    )
