"""Agents for the failover tests' worker processes."""

from typing import Any

from apex.worker import TaskContext, agent


@agent("noop", concurrency=16)
async def noop(input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    return {"step": ctx.step_id, "attempt": ctx.attempt}


agents = [noop]
