"""A test harness: orchestrator, timers and workers in-process on the real broker.

``async with Runtime(settings, agents) as rt:`` starts them as tasks; leaving
the block stops them and re-raises any crash. ``rt.history(run_id)`` reads the
run's events back from ``apex.events`` (read_committed), so assertions are made
on the log itself, never on in-memory state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from apex import codec
from apex.client import ApexClient
from apex.config import Settings
from apex.domain import events as ev
from apex.domain.messages import RunResult, StepResult
from apex.kafka.clients import make_consumer, topic_partitions
from apex.worker import Agent, Worker
from streams.orchestrator import Orchestrator
from streams.timers import TimerService

REPO = Path(__file__).resolve().parents[2]


class Runtime:
    def __init__(
        self,
        settings: Settings,
        agents: Sequence[Agent] = (),
        *,
        orchestrator: bool = True,
        timers: bool = True,
    ) -> None:
        self.settings = settings
        self.client = ApexClient(settings)
        self._services: list[Any] = []
        if orchestrator:
            self._services.append(Orchestrator(settings))
        if timers:
            self._services.append(TimerService(settings))
        if agents:
            self._services.append(Worker(settings, agents))
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Runtime:
        await self.client.start()
        self._tasks = [asyncio.create_task(s.run()) for s in self._services]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for service in self._services:
            service.stop()
        try:
            done, pending = await asyncio.wait(self._tasks, timeout=30)
            for task in pending:
                task.cancel()
            for task in done:
                if task.exception() is not None and exc[0] is None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await self.client.stop()

    def check_alive(self) -> None:
        for task in self._tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def history(self, run_id: str) -> list[ev.Event]:
        return (await read_events(self.settings)).get(run_id, [])

    async def wait_for(
        self,
        run_id: str,
        predicate: Callable[[list[ev.Event]], bool],
        timeout_s: float = 60.0,
    ) -> list[ev.Event]:
        """Poll the run's history until ``predicate`` holds; fail with the history if not."""
        deadline = time.monotonic() + timeout_s
        history: list[ev.Event] = []
        while time.monotonic() < deadline:
            self.check_alive()
            history = await self.history(run_id)
            if predicate(history):
                return history
            await asyncio.sleep(0.3)
        names = [type(e).__name__ for e in history]
        raise AssertionError(f"run {run_id}: condition not met in {timeout_s}s; history: {names}")

    async def wait_finished(self, run_id: str, timeout_s: float = 60.0) -> list[ev.Event]:
        return await self.wait_for(
            run_id, lambda h: any(isinstance(e, ev.TERMINAL_RUN_EVENTS) for e in h), timeout_s
        )


async def read_all(settings: Settings, topic: str, **consumer_options: Any) -> list[Any]:
    """Every record of ``topic`` up to its end now (read committed unless told otherwise)."""
    consumer = make_consumer(settings, **consumer_options)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[Any] = []
        while True:
            behind = [tp for tp in tps if await consumer.position(tp) < end[tp]]
            if not behind:
                return records
            batch = await consumer.getmany(*behind, timeout_ms=500)
            for tp_records in batch.values():
                records.extend(tp_records)
    finally:
        await consumer.stop()


async def read_events(settings: Settings) -> dict[str, list[ev.Event]]:
    """Every run's events from the log, in log order."""
    by_run: dict[str, list[ev.Event]] = {}
    for record in await read_all(settings, settings.topic("events")):
        event = codec.decode_event(record.value)
        by_run.setdefault(event.run_id, []).append(event)
    return by_run


async def read_results(settings: Settings) -> list[RunResult | StepResult]:
    return [
        codec.decode_result(r.value) for r in await read_all(settings, settings.topic("results"))
    ]


async def read_dlq(settings: Settings) -> list[Any]:
    return await read_all(settings, settings.topic("dlq"))


async def wait_dlq(settings: Settings, timeout_s: float = 30) -> list[Any]:
    """The DLQ's records once there is one (a letter may land after other work finishes)."""
    letters: list[Any] = []

    async def some() -> bool:
        nonlocal letters
        letters = await read_dlq(settings)
        return bool(letters)

    await until(some, "a dead letter", timeout_s)
    return letters


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(0.1)


def of_type(history: Iterable[ev.Event], kind: type[ev.Event]) -> list[Any]:
    return [e for e in history if isinstance(e, kind)]


def assert_gapless(history: Sequence[ev.Event]) -> None:
    seqs = [e.seq for e in history]
    assert seqs == list(range(1, len(seqs) + 1)), f"seq is not 1..n: {seqs}"


# -- real processes ----------------------------------------------------------------------


def spawn(settings: Settings, *args: str, name: str, log_dir: Path) -> subprocess.Popen[bytes]:
    """``python -m apex ARGS`` with the test's settings in its environment."""
    env = {**os.environ, **settings.to_env(), "APEX_INSTANCE_ID": name}
    log = (log_dir / f"{name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "apex", *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        return proc.wait(timeout=timeout)
    proc.kill()
    return proc.wait()
