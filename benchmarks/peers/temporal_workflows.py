"""The benchmark DAGs as Temporal workflows; the no-op step is the ``hop`` activity.

Workflow code runs in Temporal's sandbox: this module imports nothing but the
SDK, and names the activity by string, so the sandbox has nothing to re-import.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow

FAN_WIDTH = 8  # benchmarks.workload.FAN_WIDTH; not imported: the sandbox re-imports modules
_TIMEOUT = timedelta(seconds=60)


async def _hop(after: list[Any]) -> Any:
    return await workflow.execute_activity("hop", after, start_to_close_timeout=_TIMEOUT)


@workflow.defn(name="BenchChain5")
class Chain5:
    @workflow.run
    async def run(self) -> Any:
        out = await _hop([])
        for _ in range(4):
            out = await _hop([out])
        return out


@workflow.defn(name="BenchFan10")
class Fan10:
    @workflow.run
    async def run(self) -> Any:
        first = await _hop([])
        fanned = await asyncio.gather(*(_hop([first]) for _ in range(FAN_WIDTH)))
        return await _hop(list(fanned))


WORKFLOWS: dict[str, Any] = {"chain5": Chain5, "fan10": Fan10}
