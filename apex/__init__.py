"""Apex: an event-sourced streaming orchestrator for agent workflows.

The public API is what this package exports (``apex.__all__``, pinned by
``tests/unit/test_public_api.py``); every other module is free to change::

    from apex import ApexClient, Settings, Workflow, agent

    wf = Workflow("triage", input={"text": "string"})
    wf.step("classify", "classify", inputs={"text": wf.input.text}, publish=True)

    async with ApexClient(Settings.from_env()) as client:
        await client.register(wf.build())
        run_id = await client.start_run("triage", {"text": "printer on fire"})

Names are imported on first use (PEP 562), so ``import apex.domain`` — the
pure core — does not pull in Kafka, PostgreSQL or HTTP clients.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apex.client import ApexClient
    from apex.config import Settings
    from apex.definition_files import load_definition
    from apex.domain.builder import Retry, Step, Workflow, gate, optional, signal, when
    from apex.domain.definitions import WorkflowDefinition
    from apex.domain.errors import DefinitionError
    from apex.domain.messages import RunResult, StepResult
    from apex.queries import PendingApproval, RunInfo, RunPage
    from apex.subscription import Subscription
    from apex.sync_client import SyncApexClient
    from apex.worker.agent import agent
    from apex.worker.context import TaskContext
    from apex.worker.errors import FatalError, RetryableError
    from apex.worker.worker import Worker

__all__ = [
    "ApexClient",
    "DefinitionError",
    "FatalError",
    "PendingApproval",
    "Retry",
    "RetryableError",
    "RunInfo",
    "RunPage",
    "RunResult",
    "Settings",
    "Step",
    "StepResult",
    "Subscription",
    "SyncApexClient",
    "TaskContext",
    "Worker",
    "Workflow",
    "WorkflowDefinition",
    "agent",
    "gate",
    "load_definition",
    "optional",
    "signal",
    "when",
]

_WHERE: dict[str, str] = {
    "ApexClient": "apex.client",
    "DefinitionError": "apex.domain.errors",
    "FatalError": "apex.worker",
    "PendingApproval": "apex.queries",
    "Retry": "apex.domain.builder",
    "RetryableError": "apex.worker",
    "RunInfo": "apex.queries",
    "RunPage": "apex.queries",
    "RunResult": "apex.domain.messages",
    "Settings": "apex.config",
    "Step": "apex.domain.builder",
    "StepResult": "apex.domain.messages",
    "Subscription": "apex.subscription",
    "SyncApexClient": "apex.sync_client",
    "TaskContext": "apex.worker",
    "Worker": "apex.worker",
    "Workflow": "apex.domain.builder",
    "WorkflowDefinition": "apex.domain.definitions",
    "agent": "apex.worker",
    "gate": "apex.domain.builder",
    "load_definition": "apex.definition_files",
    "optional": "apex.domain.builder",
    "signal": "apex.domain.builder",
    "when": "apex.domain.builder",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'apex' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
