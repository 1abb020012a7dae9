"""What an agent knows about the task it runs, and how it talks back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from apex.domain.messages import TaskDispatch


class TaskContext:
    """The context of one task attempt, passed to ``f(input, ctx)``.

    ``cancelled`` is set when the agent should stop: the worker is shutting
    down and the grace period is over, or the step's timeout passed without a
    sign of life reaching Kafka (the orchestrator has given up on this
    attempt). The worker cancels the agent's asyncio task shortly after, so a
    long agent should check it between units of work. ``timed_out`` tells the
    two reasons apart.
    """

    def __init__(
        self,
        *,
        run_id: str,
        step_id: str,
        attempt: int,
        capability: str,
        definition: str = "",
        correlation_id: str = "",
        timeout_ms: int | None = None,
        worker_id: str = "",
        heartbeat: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.run_id = run_id
        self.step_id = step_id
        self.attempt = attempt
        self.capability = capability
        self.definition = definition
        """``name@version`` of the run's workflow."""
        self.correlation_id = correlation_id
        self.timeout_ms = timeout_ms
        """The step's liveness timeout: how long it may go without a sign of life."""
        self.worker_id = worker_id
        self._cancelled: asyncio.Event | None = None
        self.timed_out = False
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        self._heartbeat = heartbeat

    @classmethod
    def from_dispatch(
        cls,
        dispatch: TaskDispatch,
        *,
        worker_id: str = "",
        heartbeat: Callable[[], Awaitable[None]] | None = None,
    ) -> TaskContext:
        """The context of ``dispatch``; without ``heartbeat``, heartbeats do nothing (tests)."""
        return cls(
            run_id=dispatch.run_id,
            step_id=dispatch.step_id,
            attempt=dispatch.attempt,
            capability=dispatch.capability,
            definition=dispatch.definition,
            correlation_id=dispatch.correlation_id,
            timeout_ms=dispatch.timeout_ms,
            worker_id=worker_id,
            heartbeat=heartbeat,
        )

    @property
    def cancelled(self) -> asyncio.Event:
        """Set when the agent should stop (see the class documentation).

        Made on first use, like :attr:`logger`: most tasks end before anyone looks.
        """
        if self._cancelled is None:
            self._cancelled = asyncio.Event()
        return self._cancelled

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """The ``apex.agent.<capability>`` logger; each message names the task.

        Made on first use: most tasks never log, and a worker starts thousands a second.
        """
        if self._logger is None:
            self._logger = _TaskLogger(
                logging.getLogger(f"apex.agent.{self.capability}"), {"task": self.task_ref}
            )
        return self._logger

    @property
    def task_ref(self) -> str:
        """``run/step#attempt``: how logs name this task."""
        return f"{self.run_id}/{self.step_id}#{self.attempt}"

    async def heartbeat(self) -> None:
        """Tell the orchestrator this attempt is alive; returns once Kafka has it.

        The worker already sends heartbeats on its own while the agent runs;
        call this between long units of work to be sure the step's timeout
        does not pass.
        """
        if self._heartbeat is not None:
            await self._heartbeat()

    def _end(self) -> None:
        """The worker's call once the attempt's outcome is reported: heartbeats do nothing now.

        It also drops the reference back to the attempt, which refers to this
        context: without that cycle both are freed by reference counting as soon as
        the worker lets go of them, rather than by the cycle collector, which had a
        task run, its context, dispatch, report, asyncio task and coroutine, about
        16 objects, to find for every step.
        """
        self._heartbeat = None

    def __repr__(self) -> str:
        return f"<TaskContext {self.capability} {self.task_ref}>"


class _TaskLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every message with the task it is about."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        return f"[{extra.get('task')}] {msg}", kwargs
