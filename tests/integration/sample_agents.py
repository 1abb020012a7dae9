"""Agents that ``apex worker tests.integration.sample_agents:agents`` runs in the tests."""

from __future__ import annotations

import asyncio
from typing import Any

from apex.worker import TaskContext, agent


@agent("sample-echo")
async def echo(input: Any, ctx: TaskContext) -> Any:
    """Returns its input and who ran it."""
    return {"echo": input, "worker": ctx.worker_id}


@agent("sample-sleep")
async def sleep(input: Any) -> Any:
    """Sleeps ``input["seconds"]``, then says so."""
    await asyncio.sleep(float(input["seconds"]))
    return {"slept": input["seconds"]}


agents = [echo, sleep]
