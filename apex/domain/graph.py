"""The shape of a workflow's DAG: order and sinks."""

from __future__ import annotations

from apex.domain.definitions import WorkflowDefinition


def topological_order(definition: WorkflowDefinition) -> tuple[str, ...]:
    """Step ids, every step after its dependencies; ties keep declaration order.

    Raises ``ValueError`` naming the steps left over when the graph has a cycle
    or a dependency on an unknown step (validation reports those in detail).
    """
    position = {step.id: i for i, step in enumerate(definition.steps)}
    waiting = {step.id: len(set(step.depends_on)) for step in definition.steps}
    dependents: dict[str, list[str]] = {step.id: [] for step in definition.steps}
    for step in definition.steps:
        for dep in set(step.depends_on):
            if dep in dependents:
                dependents[dep].append(step.id)
    ready = sorted((sid for sid, n in waiting.items() if n == 0), key=position.__getitem__)
    order: list[str] = []
    while ready:
        sid = ready.pop(0)
        order.append(sid)
        released = []
        for child in dependents[sid]:
            waiting[child] -= 1
            if waiting[child] == 0:
                released.append(child)
        ready = sorted([*ready, *released], key=position.__getitem__)
    if len(order) != len(definition.steps):
        left = [s.id for s in definition.steps if s.id not in set(order)]
        raise ValueError(f"workflow {definition.key}: no order for steps {left} (cycle?)")
    return tuple(order)


def sinks(definition: WorkflowDefinition) -> tuple[str, ...]:
    """Steps no other step depends on, in declaration order."""
    needed = {dep for step in definition.steps for dep in step.depends_on}
    return tuple(step.id for step in definition.steps if step.id not in needed)
