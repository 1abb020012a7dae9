"""The no-op agent the Apex worker process runs: ``apex worker benchmarks.apex_agents:agents``."""

from __future__ import annotations

from typing import Any

from apex.worker import agent
from benchmarks.workload import hop

CAPABILITY = "bench-noop"


@agent(CAPABILITY)
async def noop(input: Any) -> Any:
    """Does nothing but measure the hop that brought it here (see benchmarks/workload.py)."""
    return hop(input.get("after") if isinstance(input, dict) else None)


agents = [noop]
