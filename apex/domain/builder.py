"""A small typed builder: workflow definitions written in Python.

::

    wf = Workflow("triage", version=1, input={"text": "string"})
    parse = wf.step("parse", "parse", inputs={"text": wf.input.text})
    classify = wf.step(
        "classify", "classify",
        inputs={"doc": parse.output.doc},
        retry=Retry(max_attempts=3),
        output={"priority": "string"},
    )
    wf.step("route", "route", inputs={"doc": parse.output.doc}, publish=True,
            approval=gate("before", only_if=when(classify.output.priority, "eq", "high")))
    definition = wf.build()

Attribute access makes references: ``wf.input.text`` is ``$.input.text`` and
``parse.output.doc.title`` is ``$.steps.parse.output.doc.title`` (use
``parse.output["odd-name"]`` for a name that is not a Python identifier or
starts with ``_``). A step depends on every step it reads, plus those named in
``after``; ``depends_on`` lists them in declaration order, so a YAML file that
does the same is equal to what the builder makes. Strings are always literals
here: there is no ``$.`` parsing and no ``$$.`` escape in Python.
:meth:`Workflow.build` validates, so what it returns is ready to run.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from apex.domain.definitions import (
    JSON,
    ApprovalGate,
    Condition,
    ConditionOp,
    FailurePolicy,
    FieldSpec,
    FieldType,
    GateWhen,
    Ref,
    RetryPolicy,
    SignalWait,
    StepDefinition,
    WorkflowDefinition,
)
from apex.domain.errors import DefinitionError, Problem, did_you_mean
from apex.domain.validation import ensure_valid

Retry = RetryPolicy
"""The step's retry policy: ``Retry(max_attempts=3, initial_backoff_ms=500)``."""

FieldLike: TypeAlias = "str | FieldType | FieldSpec"
"""A contract field: a type name (``"string"``), a :class:`FieldType` or a :class:`FieldSpec`."""

RefLike: TypeAlias = "Ref | RefPath"


class RefPath:
    """A reference being written: each attribute goes one field deeper."""

    __slots__ = ("_ref",)

    def __init__(self, ref: Ref) -> None:
        self._ref = ref

    def __getattr__(self, name: str) -> RefPath:
        if name.startswith("_"):  # keep dunder lookups (copy, pickle, repr...) working
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name: str) -> RefPath:
        if not isinstance(name, str) or not name or "." in name:
            raise TypeError(f"a field name is a non-empty string without '.', got {name!r}")
        ref = self._ref
        return RefPath(Ref(ref.source, (*ref.path, name), ref.step_id))

    def __repr__(self) -> str:
        return f"<reference {self._ref.expression}>"


def to_ref(value: RefLike) -> Ref:
    """The :class:`Ref` a :class:`RefPath` (or a Ref) stands for."""
    return value._ref if isinstance(value, RefPath) else value


@dataclass(frozen=True, slots=True)
class Step:
    """A declared step: pass ``step`` to ``after=`` or read ``step.output.<field>``."""

    id: str
    output: RefPath


def optional(kind: str | FieldType) -> FieldSpec:
    """A contract field that may be missing: ``{"customer": optional("object")}``."""
    return FieldSpec(_field_type(kind, None, "optional"), required=False)


def when(ref: RefLike, op: str | ConditionOp, value: JSON = None) -> Condition:
    """A condition: ``when(classify.output.priority, "eq", "high")``."""
    return Condition(to_ref(ref), ConditionOp(op), _literal(value))


def gate(
    when: str | GateWhen = GateWhen.BEFORE,
    *,
    deadline_ms: int | None = None,
    only_if: Condition | None = None,
) -> ApprovalGate:
    """An approval gate, asked ``before`` dispatch or ``after`` success."""
    return ApprovalGate(GateWhen(when), deadline_ms, only_if)


def signal(
    name: str, *, correlation: RefLike | str | None = None, deadline_ms: int | None = None
) -> SignalWait:
    """A wait for the named signal before the step is dispatched."""
    key = (
        correlation if correlation is None or isinstance(correlation, str) else to_ref(correlation)
    )
    return SignalWait(name, key, deadline_ms)


class Workflow:
    """A workflow definition under construction; :meth:`build` finishes it."""

    def __init__(
        self,
        name: str,
        *,
        version: int = 1,
        input: Mapping[str, FieldLike] | None = None,
        description: str = "",
        failure_policy: str | FailurePolicy = FailurePolicy.FAIL_FAST,
        timeout_ms: int | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.description = description
        self.failure_policy = FailurePolicy(failure_policy)
        self.timeout_ms = timeout_ms
        self.input = RefPath(Ref("input", ()))
        """The run input: ``wf.input.text`` reads its field ``text``."""
        self._input_contract = _contract(input or {}, "input")
        self._steps: list[StepDefinition] = []
        self._outputs: dict[str, Ref] = {}

    def step(
        self,
        step_id: str,
        capability: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        after: Iterable[Step | str] = (),
        retry: RetryPolicy | None = None,
        timeout_ms: int | None = None,
        condition: Condition | None = None,
        approval: ApprovalGate | GateWhen | str | None = None,
        wait_for_signal: SignalWait | str | None = None,
        output: Mapping[str, FieldLike] | None = None,
        publish: bool = False,
    ) -> Step:
        """Declare a step; it depends on every step it reads and on ``after``.

        ``approval="before"`` and ``wait_for_signal="name"`` are short for
        ``gate("before")`` and ``signal("name")``.
        """
        values = {name: _value(value, f"inputs.{name}") for name, value in (inputs or {}).items()}
        if isinstance(approval, str | GateWhen):
            approval = gate(approval)
        if isinstance(wait_for_signal, str):
            wait_for_signal = signal(wait_for_signal)
        reads = [*_refs_in(values.values())]
        gate_condition = approval.condition if approval is not None else None
        reads.extend(c.ref for c in (condition, gate_condition) if c is not None)
        if wait_for_signal is not None and isinstance(wait_for_signal.correlation, Ref):
            reads.append(wait_for_signal.correlation)
        read_steps = [ref.step_id for ref in reads if ref.step_id is not None]
        named = [item.id if isinstance(item, Step) else item for item in after]
        self._steps.append(
            StepDefinition(
                id=step_id,
                capability=capability,
                inputs=values,
                depends_on=self._in_declaration_order([*read_steps, *named], besides=step_id),
                retry=retry if retry is not None else RetryPolicy(),
                timeout_ms=timeout_ms,
                condition=condition,
                approval=approval,
                wait_for_signal=wait_for_signal,
                output=None if output is None else _contract(output, "output", step_id),
                publish=publish,
            )
        )
        return Step(step_id, RefPath(Ref("steps", (), step_id)))

    def output(self, name: str, ref: RefLike) -> None:
        """Name one of the run's outputs: ``wf.output("queue", route.output.queue)``."""
        self._outputs[name] = to_ref(ref)

    def build(self, *, capabilities: Collection[str] | None = None) -> WorkflowDefinition:
        """The validated definition; raise :class:`DefinitionError` with every problem."""
        definition = WorkflowDefinition(
            name=self.name,
            version=self.version,
            steps=tuple(self._steps),
            input=dict(self._input_contract),
            outputs=dict(self._outputs),
            failure_policy=self.failure_policy,
            timeout_ms=self.timeout_ms,
            description=self.description,
        )
        return ensure_valid(definition, capabilities=capabilities)

    def _in_declaration_order(self, step_ids: Iterable[str], besides: str) -> tuple[str, ...]:
        """Unique ids, declared steps first in their declaration order, others as given.

        ``besides`` (the step being declared) is kept only when named explicitly;
        validation then reports the self-dependency as a cycle.
        """
        declared = {step.id: i for i, step in enumerate(self._steps)}
        unique = list(dict.fromkeys(step_ids))
        known = sorted((s for s in unique if s in declared), key=declared.__getitem__)
        return (*known, *(s for s in unique if s not in declared))


# -- helpers --------------------------------------------------------------------------


def _contract(
    fields: Mapping[str, FieldLike], where: str, step_id: str | None = None
) -> dict[str, FieldSpec]:
    return {
        name: spec
        if isinstance(spec, FieldSpec)
        else FieldSpec(_field_type(spec, step_id, f"{where}.{name}"))
        for name, spec in fields.items()
    }


def _field_type(kind: str | FieldType, step_id: str | None, where: str) -> FieldType:
    types = [t.value for t in FieldType]
    if kind in types:
        return FieldType(kind)
    message = (
        f"unknown type {kind!r}{did_you_mean(str(kind), types)}; use one of {', '.join(types)}"
    )
    raise DefinitionError([Problem(step_id, where, message)])


def _value(value: Any, where: str) -> JSON | Ref:
    """An input value: references resolved, tuples made lists, non-JSON refused."""
    if isinstance(value, RefPath | Ref):
        return to_ref(value)
    if isinstance(value, Step):
        raise TypeError(f"{where}: pass {value.id}.output (or a field of it), not the step")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return {key: _value(item, f"{where}.{key}") for key, item in value.items()}
    raise TypeError(f"{where}: {value!r} is not a JSON value or a reference")


def _literal(value: JSON) -> JSON:
    converted = _value(value, "value")
    if next(_refs_in([converted]), None) is not None:
        raise TypeError("a condition compares with a literal, not a reference")
    return converted


def _refs_in(values: Iterable[Any]) -> Iterator[Ref]:
    for value in values:
        if isinstance(value, Ref):
            yield value
        elif isinstance(value, list):
            yield from _refs_in(value)
        elif isinstance(value, dict):
            yield from _refs_in(value.values())
