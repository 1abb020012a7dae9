"""The public surface is ``apex.__all__`` (STYLE §3): pinned here, so changing it is a decision.

Adding a name is a promise to keep it; removing or renaming one breaks users.
Change this list only together with the README's "Python client" section.
"""

from __future__ import annotations

import subprocess
import sys

import apex

PUBLIC_API = [
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


def test_the_public_api_is_pinned() -> None:
    assert sorted(apex.__all__) == PUBLIC_API


def test_every_public_name_resolves_to_its_home_object() -> None:
    from apex.client import ApexClient
    from apex.domain.builder import Workflow
    from apex.sync_client import SyncApexClient
    from apex.worker import agent

    for name in apex.__all__:
        assert getattr(apex, name) is not None, name
    assert apex.ApexClient is ApexClient
    assert apex.SyncApexClient is SyncApexClient
    assert apex.Workflow is Workflow
    assert apex.agent is agent
    assert sorted(n for n in dir(apex) if n in PUBLIC_API) == PUBLIC_API


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        apex.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("apex.NoSuchThing resolved")


def test_importing_the_pure_core_does_not_import_io_clients() -> None:
    code = (
        "import sys, apex.domain.decider, apex.domain.builder\n"
        "io = ('aiokafka', 'sqlalchemy', 'fastapi', 'asyncpg')\n"
        "loaded = [m for m in io if m in sys.modules]\n"
        "print(','.join(loaded))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
