"""Agents for the failover tests' worker processes.

Each step takes 100 ms, so a batch of runs lasts a few seconds and a kill
lands in the middle of it (the test checks it did).
"""

import asyncio
from typing import Any

from apex.worker import TaskContext, agent


@agent("noop", concurrency=8)
async def noop(input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    await asyncio.sleep(0.1)
    return {"step": ctx.step_id, "attempt": ctx.attempt}


agents = [noop]
