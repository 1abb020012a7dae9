"""Agents the telemetry tests run (`apex worker tests.integration.telemetry_agents:agents`)."""

from __future__ import annotations

import asyncio
from typing import Any

from apex.worker import RetryableError, TaskContext, agent


@agent("telemetry-echo")
async def echo(input: Any, ctx: TaskContext) -> Any:
    """Returns its input."""
    ctx.logger.info("echoing")
    return {"echo": input}


@agent("telemetry-flaky")
async def flaky(input: Any, ctx: TaskContext) -> Any:
    """Fails its first attempt (retryable), then succeeds."""
    if ctx.attempt == 1:
        raise RetryableError("first attempt fails")
    return {"attempt": ctx.attempt}


@agent("telemetry-sleepy", heartbeat_s=3600)  # no heartbeat within the step's timeout
async def sleepy(input: Any, ctx: TaskContext) -> Any:
    """Outlives the step's timeout on its first attempt (the step times out), then is quick."""
    if ctx.attempt == 1:
        await asyncio.sleep(float(input.get("sleep_s", 3)))
    return {"attempt": ctx.attempt}


agents = [echo, flaky, sleepy]
