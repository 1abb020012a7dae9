"""What makes a well-formed workflow definition mean something runnable.

:func:`validate` returns every problem, each naming the step and the reason;
:func:`ensure_valid` raises them as one :class:`DefinitionError`;
:func:`topological_order` is the order the decider walks the DAG in.

The rules, beyond the obvious ranges (retry, timeouts, deadlines, ids):

- **The graph**: step ids are unique, ``depends_on`` names known steps and has
  no cycle. In such a graph every step can be scheduled, so a step is only
  *unreachable* through a cycle or an unknown dependency, both refused.
- **References** read the run input or the output of an *upstream* step (one
  reachable through ``depends_on``): reading any other step would race with it.
  An ``after`` approval gate's condition may also read the step's own output.
  A reference's first field must be declared by the contract it reads (the
  run's input contract when it is non-empty, the upstream step's ``output``
  when declared), and a path may only go inside an ``object``, ``array`` or
  ``any`` field.
- **Dangling steps**: when the workflow declares ``outputs``, the run's result
  is those outputs plus the published steps. A step from which no step read by
  ``outputs`` and no ``publish`` step can be reached downstream (itself
  included) is dangling: its work would be thrown away. Without ``outputs``
  the result is every sink step's output, so no step dangles.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Collection, Iterator, Mapping

from apex.domain.definitions import (
    JSON,
    Condition,
    ConditionOp,
    Contract,
    FieldType,
    GateWhen,
    Ref,
    RetryPolicy,
    StepDefinition,
    WorkflowDefinition,
)
from apex.domain.errors import DefinitionError, Problem, did_you_mean

STEP_ID_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
"""What a step id looks like (it is used in topic keys, metrics and references)."""


def validate(
    defn: WorkflowDefinition, *, capabilities: Collection[str] | None = None
) -> list[Problem]:
    """Every reason ``defn`` cannot run; empty when it can.

    With ``capabilities`` (the registered agent capabilities), a step whose
    capability is not among them is refused too.
    """
    graph = _Graph(defn)
    problems = _workflow_problems(defn)
    for step in defn.steps:
        problems += _step_problems(step, capabilities)
    problems += graph.problems()
    for step in defn.steps:
        problems += _reference_problems(defn, step, graph)
    problems += _output_problems(defn, graph)
    problems += _dangling_problems(defn, graph)
    return problems


def ensure_valid(
    defn: WorkflowDefinition, *, capabilities: Collection[str] | None = None
) -> WorkflowDefinition:
    """``defn`` itself when it is valid; otherwise raise :class:`DefinitionError`."""
    problems = validate(defn, capabilities=capabilities)
    if problems:
        raise DefinitionError(problems)
    return defn


def topological_order(defn: WorkflowDefinition) -> tuple[str, ...]:
    """Step ids, each after all of its dependencies; ties in declaration order.

    Raise :class:`DefinitionError` when the graph has duplicate ids, unknown
    dependencies or a cycle.
    """
    graph = _Graph(defn)
    problems = graph.problems()
    if problems:
        raise DefinitionError(problems)
    waiting = {step_id: len(set(deps)) for step_id, deps in graph.deps.items()}
    ready = [graph.index[step_id] for step_id, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        step_id = defn.steps[heapq.heappop(ready)].id
        order.append(step_id)
        for dependent in graph.dependents[step_id]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, graph.index[dependent])
    return tuple(order)


# -- the graph ------------------------------------------------------------------------


class _Graph:
    """``depends_on`` edges between known steps (the first of duplicate ids wins)."""

    def __init__(self, defn: WorkflowDefinition) -> None:
        self.steps = defn.steps
        self.positions: dict[str, list[int]] = {}
        for position, step in enumerate(defn.steps):
            self.positions.setdefault(step.id, []).append(position)
        self.index = {step_id: places[0] for step_id, places in self.positions.items()}
        self.deps: dict[str, tuple[str, ...]] = {
            step_id: tuple(d for d in defn.steps[i].depends_on if d in self.index)
            for step_id, i in self.index.items()
        }
        self.dependents: dict[str, list[str]] = {step_id: [] for step_id in self.index}
        for step_id, deps in self.deps.items():
            for dep in dict.fromkeys(deps):
                self.dependents[dep].append(step_id)
        self._ancestors: dict[str, frozenset[str]] = {}

    def problems(self) -> list[Problem]:
        """Duplicate ids, unknown or repeated dependencies, and cycles."""
        problems: list[Problem] = []
        for step_id, positions in self.positions.items():
            places = [f"steps[{i}]" for i in positions]
            if len(places) > 1:
                message = f"duplicate step id, declared {len(places)} times ({', '.join(places)})"
                problems.append(Problem(step_id, "id", f"{message}; make the ids unique"))
        for step in self.steps:
            seen: set[str] = set()
            for dep in step.depends_on:
                if dep not in self.index:
                    message = f"unknown step {dep!r}{did_you_mean(dep, self.index)}"
                    problems.append(Problem(step.id, "depends_on", message))
                elif dep in seen:
                    problems.append(Problem(step.id, "depends_on", f"lists {dep!r} twice"))
                seen.add(dep)
        for cycle in self._cycles():
            path = " -> ".join([*cycle, cycle[0]])
            message = f"cycle: {path} (each step depends on the next); remove one dependency"
            problems.append(Problem(cycle[0], "depends_on", message))
        return problems

    def ancestors(self, step_id: str) -> frozenset[str]:
        """Every step reachable from ``step_id`` through ``depends_on``."""
        if step_id not in self._ancestors:
            seen: set[str] = set()
            stack = list(self.deps.get(step_id, ()))
            while stack:
                dep = stack.pop()
                if dep not in seen:
                    seen.add(dep)
                    stack.extend(self.deps[dep])
            self._ancestors[step_id] = frozenset(seen)
        return self._ancestors[step_id]

    def _cycles(self) -> list[list[str]]:
        """One cycle per strongly connected component that has one, shortest first
        through the component's first-declared step, in declaration order."""
        cycles = []
        for component in self._components():
            start = min(component, key=self.index.__getitem__)
            if len(component) > 1 or start in self.deps[start]:
                cycles.append(self._shortest_cycle(start, component))
        return sorted(cycles, key=lambda cycle: self.index[cycle[0]])

    def _shortest_cycle(self, start: str, component: set[str]) -> list[str]:
        came_from: dict[str, str] = {}
        frontier = [start]
        while frontier:
            following = []
            for step_id in frontier:
                for dep in self.deps[step_id]:
                    if dep == start:
                        path = [step_id]
                        while path[-1] != start:
                            path.append(came_from[path[-1]])
                        return path[::-1]
                    if dep in component and dep not in came_from:
                        came_from[dep] = step_id
                        following.append(dep)
            frontier = following
        raise AssertionError(f"no cycle through {start!r} in its component")  # pragma: no cover

    def _components(self) -> list[set[str]]:
        """Tarjan's strongly connected components, iteratively (no recursion limit)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        components: list[set[str]] = []
        for root in self.index:
            if root in index:
                continue
            work: list[tuple[str, Iterator[str]]] = [(root, iter(self.deps[root]))]
            index[root] = low[root] = len(index)
            stack.append(root)
            on_stack.add(root)
            while work:
                node, deps = work[-1]
                dep = next(deps, None)
                if dep is None:
                    work.pop()
                    if work:
                        low[work[-1][0]] = min(low[work[-1][0]], low[node])
                    if low[node] == index[node]:
                        component: set[str] = set()
                        while node not in component:
                            member = stack.pop()
                            on_stack.discard(member)
                            component.add(member)
                        components.append(component)
                elif dep not in index:
                    index[dep] = low[dep] = len(index)
                    stack.append(dep)
                    on_stack.add(dep)
                    work.append((dep, iter(self.deps[dep])))
                elif dep in on_stack:
                    low[node] = min(low[node], index[dep])
        return components


# -- the workflow and each step on its own ----------------------------------------------


def _workflow_problems(defn: WorkflowDefinition) -> list[Problem]:
    problems: list[Problem] = []
    if not defn.name.strip():
        problems.append(Problem(None, "name", "must not be empty: give the workflow a name"))
    if defn.version < 1:
        problems.append(Problem(None, "version", f"must be 1 or more, got {defn.version}"))
    if not defn.steps:
        problems.append(Problem(None, "steps", "a workflow needs at least one step"))
    problems += _duration(None, "timeout_ms", defn.timeout_ms, "; leave it out for no run timeout")
    problems += _contract_names(None, "input", defn.input)
    return problems


def _step_problems(step: StepDefinition, capabilities: Collection[str] | None) -> list[Problem]:
    def problem(field: str, message: str) -> None:
        problems.append(Problem(step.id, field, message))

    problems: list[Problem] = []
    if not STEP_ID_PATTERN.fullmatch(step.id):
        rule = "use letters, digits, '_' and '-', starting with a letter or '_'"
        problem("id", f"{step.id!r} is not a valid step id: {rule}")
    if not step.capability.strip():
        problem("capability", "must not be empty: name the agent capability that runs the step")
    elif capabilities is not None and step.capability not in capabilities:
        known = ", ".join(sorted(capabilities)) or "none"
        hint = did_you_mean(step.capability, capabilities)
        message = f"no agent capability {step.capability!r} is registered{hint}"
        problem("capability", f"{message} (registered: {known})")
    problems += _retry_problems(step.id, step.retry)
    problems += _duration(step.id, "timeout_ms", step.timeout_ms, "; leave it out for no timeout")
    if step.condition is not None:
        problems += _condition_problems(step.id, "condition", step.condition)
    if step.approval is not None:
        problems += _duration(step.id, "approval.deadline_ms", step.approval.deadline_ms)
        if step.approval.condition is not None:
            problems += _condition_problems(step.id, "approval.condition", step.approval.condition)
    if step.wait_for_signal is not None:
        if not step.wait_for_signal.name.strip():
            problem("wait_for_signal.name", "must not be empty: name the signal the step waits for")
        wait_deadline = step.wait_for_signal.deadline_ms
        problems += _duration(step.id, "wait_for_signal.deadline_ms", wait_deadline)
    if step.output is not None:
        problems += _contract_names(step.id, "output", step.output)
    return problems


def _retry_problems(step_id: str, retry: RetryPolicy) -> list[Problem]:
    problems: list[Problem] = []

    def check(ok: bool, field: str, rule: str, value: object) -> None:
        if not ok:
            problems.append(Problem(step_id, f"retry.{field}", f"must be {rule}, got {value}"))

    # Each check states what is right, so that NaN (never >= 1) fails it too.
    attempts, multiplier, jitter = retry.max_attempts, retry.multiplier, retry.jitter
    initial, maximum = retry.initial_backoff_ms, retry.max_backoff_ms
    check(attempts >= 1, "max_attempts", "1 or more (1 means no retry)", attempts)
    check(initial > 0, "initial_backoff_ms", "a positive number of milliseconds", initial)
    check(maximum > 0, "max_backoff_ms", "a positive number of milliseconds", maximum)
    if initial > 0 and maximum > 0:
        check(
            maximum >= initial,
            "max_backoff_ms",
            f"at least initial_backoff_ms ({initial})",
            maximum,
        )
    check(multiplier >= 1, "multiplier", "1 or more (1 keeps the backoff constant)", multiplier)
    check(0 <= jitter <= 1, "jitter", "between 0 and 1 (a fraction of the backoff)", jitter)
    return problems


def _duration(step_id: str | None, field: str, value: int | None, hint: str = "") -> list[Problem]:
    if value is None or value > 0:
        return []
    return [
        Problem(step_id, field, f"must be a positive number of milliseconds, got {value}{hint}")
    ]


_NEEDS_VALUE = {ConditionOp.GT, ConditionOp.GE, ConditionOp.LT, ConditionOp.LE}
_NEEDS_LIST = {ConditionOp.IN, ConditionOp.NOT_IN}
_TAKES_NO_VALUE = {ConditionOp.TRUTHY, ConditionOp.FALSY, ConditionOp.EXISTS}


def _condition_problems(step_id: str, field: str, condition: Condition) -> list[Problem]:
    op = ConditionOp(condition.op)
    if op in _NEEDS_VALUE and condition.value is None:
        message = f"op '{op.value}' needs a value to compare with"
    elif op in _NEEDS_LIST and not isinstance(condition.value, list | tuple):
        message = f"op '{op.value}' needs a list value, e.g. [a, b]"
    elif op in _TAKES_NO_VALUE and condition.value is not None:
        message = f"op '{op.value}' takes no value; remove it"
    else:
        return []
    return [Problem(step_id, f"{field}.value", message)]


def _contract_names(step_id: str | None, field: str, contract: Contract) -> list[Problem]:
    rule = "a field name must be non-empty and contain no '.' (references split paths on '.')"
    return [
        Problem(step_id, f"{field}.{name}", rule) for name in contract if not name or "." in name
    ]


# -- references, run outputs and dangling steps -----------------------------------------

_SCALARS = {FieldType.STRING, FieldType.INTEGER, FieldType.NUMBER, FieldType.BOOLEAN}


def _reference_problems(
    defn: WorkflowDefinition, step: StepDefinition, graph: _Graph
) -> list[Problem]:
    problems: list[Problem] = []
    for field, ref in _located_refs(step):
        message = _reader_mismatch(step, field, ref, graph) or _mismatch(defn, ref, graph)
        if message:
            problems.append(Problem(step.id, field, message))
    return problems


def _reader_mismatch(step: StepDefinition, field: str, ref: Ref, graph: _Graph) -> str:
    """What is wrong with ``step`` reading the step ``ref`` points to; ``""`` if nothing."""
    if ref.source != "steps" or ref.step_id is None or ref.step_id not in graph.index:
        return ""
    if ref.step_id == step.id:
        gate_after = step.approval is not None and step.approval.when == GateWhen.AFTER
        if gate_after and field.startswith("approval."):
            return ""
        return f"{ref} reads the step's own output, which does not exist before it runs"
    if ref.step_id not in graph.ancestors(step.id):
        return (
            f"{ref} reads step {ref.step_id!r}, which is not upstream of {step.id!r} and "
            f"may not have run yet: add {ref.step_id!r} to depends_on"
        )
    return ""


def _output_problems(defn: WorkflowDefinition, graph: _Graph) -> list[Problem]:
    problems: list[Problem] = []
    for name, ref in defn.outputs.items():
        message = _mismatch(defn, ref, graph)
        if message:
            problems.append(Problem(None, f"outputs.{name}", message))
    return problems


def _mismatch(defn: WorkflowDefinition, ref: Ref, graph: _Graph) -> str:
    """What is wrong with where ``ref`` points, ignoring who reads it; ``""`` if nothing."""
    if ref.source == "input":
        contract: Contract | None = defn.input or None
        owner = "the run's input contract"
    elif ref.step_id is None or ref.step_id not in graph.index:
        step_id = ref.step_id or ""
        return f"{ref} reads unknown step {step_id!r}{did_you_mean(step_id, graph.index)}"
    else:
        contract = defn.steps[graph.index[ref.step_id]].output
        owner = f"the output contract of step {ref.step_id!r}"
    if contract is None or not ref.path:
        return ""
    name = ref.path[0]
    if name not in contract:
        declared = ", ".join(contract) or "nothing"
        hint = did_you_mean(name, contract)
        return f"{ref} reads field {name!r}, but {owner} declares {declared}{hint}"
    kind = FieldType(contract[name].type)
    if len(ref.path) > 1 and kind in _SCALARS:
        return f"{ref} reads inside field {name!r}, but {owner} declares it a {kind.value}"
    return ""


def _dangling_problems(defn: WorkflowDefinition, graph: _Graph) -> list[Problem]:
    if not defn.outputs:
        return []
    useful = {ref.step_id for ref in defn.outputs.values() if ref.step_id in graph.index}
    useful |= {step.id for step in defn.steps if step.publish}
    for step_id in list(useful):
        useful |= graph.ancestors(step_id)
    message = (
        "dangling step: no run output reads it and no published step depends on it, so its "
        "work is thrown away; read it in outputs, set publish: true, or remove it"
    )
    return [Problem(step.id, "", message) for step in defn.steps if step.id not in useful]


def _located_refs(step: StepDefinition) -> Iterator[tuple[str, Ref]]:
    """Each reference the step reads, with where it is written."""
    for name, value in step.inputs.items():
        yield from _refs_in(f"inputs.{name}", value)
    if step.condition is not None:
        yield "condition.ref", step.condition.ref
    if step.approval is not None and step.approval.condition is not None:
        yield "approval.condition.ref", step.approval.condition.ref
    if step.wait_for_signal is not None and isinstance(step.wait_for_signal.correlation, Ref):
        yield "wait_for_signal.correlation", step.wait_for_signal.correlation


def _refs_in(field: str, value: JSON | Ref) -> Iterator[tuple[str, Ref]]:
    if isinstance(value, Ref):
        yield field, value
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _refs_in(f"{field}[{i}]", item)
    elif isinstance(value, Mapping):
        for key, nested in value.items():
            yield from _refs_in(f"{field}.{key}", nested)
