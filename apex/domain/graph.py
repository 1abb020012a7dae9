"""The shape of a workflow's DAG: order and sinks.

``topological_order`` is validation's (one implementation): steps after their
dependencies, ties in declaration order; it raises ``DefinitionError`` (a
``ValueError``) on a cycle, an unknown dependency or a duplicate id.
"""

from __future__ import annotations

from apex.domain.definitions import WorkflowDefinition
from apex.domain.validation import topological_order

__all__ = ["sinks", "topological_order"]


def sinks(definition: WorkflowDefinition) -> tuple[str, ...]:
    """Steps no other step depends on, in declaration order."""
    needed = {dep for step in definition.steps for dep in step.depends_on}
    return tuple(step.id for step in definition.steps if step.id not in needed)
