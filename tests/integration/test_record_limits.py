"""Records over APEX_MAX_RECORD_BYTES, on the real broker: refused where they arise, never fatal.

The broker refuses a record over its limit, and with it the whole transaction.
Before these checks, a decision that would write one (a run's input plus its
definition, a fan-in's gathered outputs) stopped the orchestrator, and stopped
it again on the same command after every restart.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from apex import codec
from apex.config import Settings
from apex.domain import commands as cmd
from apex.domain import events as ev
from apex.domain.definitions import RetryPolicy, StepDefinition, WorkflowDefinition
from apex.kafka import dlq
from apex.kafka.clients import RecordTooLarge
from apex.worker import agent
from tests.integration.runtime import Runtime, wait_dlq

BLOB = 30_000
"""Characters of the large input or output."""
LIMIT = BLOB + 1_000
"""A record limit that a command with ``BLOB`` fits, and ``BLOB`` plus a definition does not."""


def _chain(name: str, steps: int, description: str = "") -> WorkflowDefinition:
    return WorkflowDefinition(
        name=name,
        version=1,
        description=description,
        steps=tuple(
            StepDefinition(
                id=f"step-{i}",
                capability="ok",
                depends_on=(f"step-{i - 1}",) if i else (),
                retry=RetryPolicy(max_attempts=3),
            )
            for i in range(steps)
        ),
    )


@agent("ok")
async def ok(input: Any) -> Any:
    return {"ok": True}


async def test_a_decision_over_the_limit_goes_to_the_dlq_and_the_orchestrator_goes_on(
    apex_settings: Settings,
) -> None:
    settings = replace(apex_settings, max_record_bytes=LIMIT)
    wide = _chain("wide", 3, description="what it does, at length " * 100)
    # The run's input fits a command; with the definition RunStarted carries, it cannot.
    assert len(codec.encode_definition(wide)) > 2 * (LIMIT - BLOB)
    async with Runtime(settings, [ok]) as rt:
        await rt.client.register(wide)
        too_large = await rt.client.start_run("wide", {"blob": "x" * BLOB})
        fine = await rt.client.start_run("wide", {"blob": "small"})
        history = await rt.wait_finished(fine)
        letters = await wait_dlq(settings)
        assert await rt.history(too_large) == [], "nothing of the dropped decision was written"
    assert isinstance(history[-1], ev.RunCompleted)
    (letter,) = letters
    headers = dict(letter.headers)
    assert headers[dlq.ERROR_TYPE] == b"RecordTooLarge"
    reason = headers[dlq.REASON].decode()
    assert "apex.RunStarted" in reason and f"{LIMIT:,}-byte limit" in reason, reason
    assert letter.key == too_large.encode()
    original = codec.decode_command(letter.value)  # set aside whole: it fits the limit
    assert isinstance(original, cmd.StartRun) and original.run_id == too_large
    assert original.input == {"blob": "x" * BLOB}


async def test_an_output_over_the_limit_fails_the_step_without_retry(
    apex_settings: Settings,
) -> None:
    settings = replace(apex_settings, max_record_bytes=LIMIT)

    @agent("ok")
    async def verbose(input: Any) -> Any:
        return {"blob": "x" * (LIMIT + 1)}

    async with Runtime(settings, [verbose]) as rt:
        await rt.client.register(_chain("verbose", 1))
        run_id = await rt.client.start_run("verbose")
        history = await rt.wait_finished(run_id)
    failed = history[-1]
    assert isinstance(failed, ev.RunFailed), failed
    assert "RecordTooLarge" in failed.error and "too large to report" in failed.error
    assert [e.attempt for e in history if isinstance(e, ev.StepDispatched)] == [1]


async def test_a_command_over_the_limit_is_refused_before_it_is_sent(
    apex_settings: Settings,
) -> None:
    settings = replace(apex_settings, max_record_bytes=LIMIT)
    async with Runtime(settings, [ok]) as rt:
        await rt.client.register(_chain("big-input", 1))
        with pytest.raises(RecordTooLarge, match=f"StartRun .* over the {LIMIT:,}-byte limit"):
            await rt.client.start_run("big-input", {"blob": "x" * LIMIT}, run_id="never")
        await asyncio.sleep(1)
        assert await rt.history("never") == []
