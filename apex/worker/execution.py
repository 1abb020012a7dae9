"""One task attempt, from its dispatch to its acknowledged outcome report.

:meth:`TaskRun.run` runs the agent while sending heartbeats, then reports
``ReportTaskSucceeded`` or ``ReportTaskFailed`` and returns only once Kafka has
acknowledged every report: then, and only then, may the worker commit the
dispatch's offset.

``ReportTaskStarted`` goes out only for an agent still running after
``started_after_s`` (``APEX_WORKER_STARTED_AFTER_MS``). A quick task reports its
outcome alone: the decider accepts an outcome for a dispatched attempt, and
each report it does not need costs the orchestrator a command, an event and a
Kafka transaction — with no-op agents, the started reports were two fifths of
its work. The read models then show a quick step going from dispatched to done
(its started time is its finish); the worker's own metrics still time it.
The report goes out earlier when half the time left before the step's
deadline (counted from the dispatch, as the orchestrator counts it) is shorter.

Every report's ``command_id`` is derived from (run, step, attempt, kind), so a
redelivered dispatch yields the same ids and the decider can drop the repeats.

Liveness: the orchestrator times a step out when ``timeout_ms`` passes without
a sign of life (start or heartbeat). The worker keeps the same clock: if no
heartbeat reached Kafka in time (the broker was unreachable, or the agent's
``heartbeat_s`` is longer than the timeout), the attempt is lost anyway, so
``ctx.cancelled`` is set, and after the grace period the agent is cancelled
and a retryable failure is reported (the decider drops it if it already timed
the attempt out).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer

from apex import codec
from apex.clock import now_ms
from apex.config import Settings
from apex.domain.commands import (
    Command,
    ReportTaskFailed,
    ReportTaskHeartbeat,
    ReportTaskStarted,
    ReportTaskSucceeded,
)
from apex.domain.messages import TaskDispatch
from apex.kafka.clients import RecordTooLarge, oversize
from apex.kafka.dlq import DeadLetter
from apex.telemetry.propagation import TRACE_HEADERS
from apex.worker.agent import Agent
from apex.worker.alarms import Alarm, Alarms
from apex.worker.context import TaskContext
from apex.worker.errors import DEFAULT_NON_RETRYABLE, describe, is_retryable

log = logging.getLogger("apex.worker")

Headers = list[tuple[str, bytes]]
C = TypeVar("C", bound=Command)

CANCEL_WAIT_S = 5.0
"""How long a cancelled agent gets to unwind (its ``finally`` blocks); it may ignore it."""

PROPAGATED_HEADERS = TRACE_HEADERS
"""W3C trace context travels from the dispatch (or the attempt's span) to its reports."""


class Reporter:
    """Sends a worker's records; each send returns the future of Kafka's acknowledgement."""

    def __init__(self, producer: AIOKafkaProducer, settings: Settings, worker_id: str) -> None:
        self.producer = producer
        self.worker_id = worker_id
        self._commands_topic = settings.topic("commands")
        self._max_record_bytes = settings.max_record_bytes

    async def send(self, command: Command, headers: Headers) -> asyncio.Future[Any]:
        """Queue ``command`` for ``apex.commands``, keyed by its run id (that is its order).

        :class:`RecordTooLarge` if it is over ``APEX_MAX_RECORD_BYTES``: nothing is sent.
        """
        value, key = codec.encode_command(command), command.run_id.encode()
        limit = self._max_record_bytes
        if (size := oversize(key, value, headers, limit)) is not None:
            raise RecordTooLarge(
                f"the {type(command).__name__} would be a {size:,}-byte record, over the "
                f"{limit:,}-byte limit (APEX_MAX_RECORD_BYTES)"
            )
        future: asyncio.Future[Any] = await self.producer.send(
            self._commands_topic, value=value, key=key, headers=headers
        )
        return future

    async def send_dead_letter(self, letter: DeadLetter) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await self.producer.send(
            letter.topic, value=letter.value, key=letter.key, headers=letter.headers
        )
        return future


class TaskRun:
    """The execution of one dispatch by one agent."""

    def __init__(
        self,
        agent: Agent,
        dispatch: TaskDispatch,
        reporter: Reporter,
        *,
        heartbeat_s: float | None,
        grace_s: float,
        started_after_s: float = 0.0,
        non_retryable: tuple[type[BaseException], ...] = DEFAULT_NON_RETRYABLE,
        headers: Iterable[tuple[str, bytes]] | None = None,
        alarms: Alarms | None = None,
    ) -> None:
        """``alarms``: the wake-ups of the worker's attempts (default: this attempt's own)."""
        self.agent = agent
        self.dispatch = dispatch
        self.ctx = TaskContext.from_dispatch(
            dispatch, worker_id=reporter.worker_id, heartbeat=self._heartbeat
        )
        self._reporter = reporter
        self._heartbeat_s = heartbeat_s
        self._started_after_s = started_after_s
        self._grace_s = grace_s
        self._non_retryable = non_retryable
        self._headers = [(k, v) for k, v in headers or () if k in PROPAGATED_HEADERS]
        self._beats = 0
        self._alive_at = 0.0
        self._beat_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[Any] | None = None
        """The task that runs :meth:`run`, and the agent in it."""
        self._alarms = Alarms() if alarms is None else alarms
        self._alarm: Alarm | None = None
        self._started_due = math.inf
        self._next_beat = math.inf
        self._timeout_s = math.inf
        self._starting: asyncio.Future[asyncio.Future[Any]] | None = None
        self._cancelled_by_deadline = False
        self.outcome: Command | None = None
        """The report sent at the end: ``ReportTaskSucceeded`` or ``ReportTaskFailed``."""
        self.error: BaseException | None = None
        """Why the attempt failed (the agent's exception, a timeout, a cancellation)."""
        self.started_at = 0.0
        self.finished_at = 0.0
        """Wall-clock seconds around the agent's run (for the step duration metric)."""

    async def run(self) -> None:
        """Report, run, report; return once Kafka acknowledged the reports.

        Raises whatever the producer raises: a report that cannot be delivered
        must stop the worker, since its offset can never be committed.

        The agent runs in the task that runs this method, and one alarm (see
        :mod:`apex.worker.alarms`) stands for the delayed start report, the
        heartbeats and the liveness deadline: with thousands of quick tasks in
        flight, a task and a sleep for each of these was most of the worker's
        CPU per step.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        now = self._alive_at = loop.time()
        self.started_at = time.time()
        since_dispatch = max(0.0, self.started_at - self.dispatch.dispatched_at_ms / 1000)
        reports: list[asyncio.Future[Any]] = []
        delay = self._started_delay(since_dispatch)
        if delay <= 0:
            reports.append(await self._report_started())
        else:
            self._started_due = now + delay
        timeout_ms = self.dispatch.timeout_ms
        self._timeout_s = timeout_ms / 1000 if timeout_ms else math.inf
        self._next_beat = now + self._heartbeat_s if self._heartbeat_s else math.inf
        self._arm()
        try:
            outcome = await self._run_agent()
        finally:
            self._disarm()
        self.finished_at = time.time()
        starting = self._starting
        if starting is not None:
            starting.cancel()
            await asyncio.wait({starting})  # a start report being queued goes first
            if not starting.cancelled():
                reports.append(starting.result())
        try:
            reports.append(await self._send_outcome(outcome))
            for report in reports:
                await report
        finally:
            self.ctx._end()  # breaks the cycle TaskRun -> ctx -> heartbeat -> TaskRun

    def _started_delay(self, since_dispatch: float) -> float:
        timeout_ms = self.dispatch.timeout_ms
        if not timeout_ms:
            return self._started_after_s
        left = timeout_ms / 1000 - since_dispatch
        return max(0.0, min(self._started_after_s, left / 2))

    async def _report_started(self) -> asyncio.Future[Any]:
        """Queue ``ReportTaskStarted``; return the future of its acknowledgement."""
        sent_at = asyncio.get_running_loop().time()
        future = await self._send(self._report(ReportTaskStarted, "started"))
        self._alive_at = max(self._alive_at, sent_at)
        return future

    # -- the agent, supervised ---------------------------------------------------------

    async def _run_agent(self) -> Command:
        """Run the agent in this task; its outcome as a report (none if we are stopped)."""
        try:
            output = await self.agent.invoke(self.dispatch.input, self.ctx)
        except asyncio.CancelledError as exc:
            if self._stopped():
                self.ctx.cancelled.set()  # for whatever the agent left running
                raise
            return self._failed(exc)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            if self._stopped():
                raise asyncio.CancelledError from exc
            return self._failed(exc)
        if self._stopped():  # the agent ignored the cancellation: still no report
            raise asyncio.CancelledError
        return self._report(ReportTaskSucceeded, "succeeded", output=output)

    def _stopped(self) -> bool:
        """Whether the task running us was cancelled by someone else than our deadline.

        Our own cancellation (the agent timed out) is taken back with
        ``uncancel()``, so a stop of the worker at the same moment still counts.
        """
        assert self._task is not None
        if self._cancelled_by_deadline:
            self._cancelled_by_deadline = False
            return self._task.uncancel() > 0
        return self._task.cancelling() > 0

    def _failed(self, exc: BaseException) -> Command:
        if isinstance(exc, asyncio.CancelledError):
            if self.ctx.timed_out:
                self.error = TimeoutError(
                    f"no sign of life reached Kafka for {self.dispatch.timeout_ms} ms; "
                    f"worker {self._reporter.worker_id} cancelled the task"
                )
            else:
                self.error = asyncio.CancelledError("the agent's task was cancelled")
            error = f"{type(self.error).__name__}: {self.error}"
            return self._report(ReportTaskFailed, "failed", error=error, retryable=True)
        self.error = exc
        retryable = is_retryable(exc, self._non_retryable)
        self.ctx.logger.warning(
            "failed (%s)", "retryable" if retryable else "not retryable", exc_info=exc
        )
        return self._report(ReportTaskFailed, "failed", error=describe(exc), retryable=retryable)

    # -- the alarm: start report, heartbeats, liveness deadline ----------------------------

    def _arm(self) -> None:
        """Wake at the earliest of the start report, the next heartbeat, the deadline."""
        wake = min(self._started_due, self._next_beat, self._alive_at + self._timeout_s)
        if wake != math.inf:
            self._alarm = self._alarms.call_at(wake, self._on_alarm)

    def _on_alarm(self) -> None:
        loop = asyncio.get_running_loop()
        self._alarm = None
        now = loop.time()
        if now >= self._started_due:
            self._started_due = math.inf
            self._starting = asyncio.ensure_future(self._report_started())
        if now >= self._next_beat:
            self._next_beat = now + (self._heartbeat_s or math.inf)
            if self._beat_task is None or self._beat_task.done():
                self._beat_task = asyncio.ensure_future(self._heartbeat_quietly())
        elif now >= self._alive_at + self._timeout_s:
            self._time_out(loop)
            return
        self._arm()

    def _time_out(self, loop: asyncio.AbstractEventLoop) -> None:
        """No sign of life reached Kafka in time: signal the agent, cancel it after the grace."""
        self.ctx.timed_out = True
        self.ctx.cancelled.set()
        self.ctx.logger.warning(
            "no sign of life reached Kafka for %d ms: the orchestrator gives this attempt up; "
            "cancelling the agent in %.1f s",
            self.dispatch.timeout_ms,
            self._grace_s,
        )
        self._alarm = self._alarms.call_at(loop.time() + self._grace_s, self._cancel_agent)

    def _cancel_agent(self) -> None:
        self._alarm = None
        assert self._task is not None
        self._cancelled_by_deadline = True
        self._task.cancel()

    def _disarm(self) -> None:
        """The agent is done: no more alarm, no heartbeat in flight."""
        if self._alarm is not None:
            self._alarms.drop(self._alarm)
            self._alarm = None
        self._started_due = self._next_beat = self._timeout_s = math.inf
        if self._beat_task is not None:
            self._beat_task.cancel()

    async def _heartbeat(self) -> None:
        """``ctx.heartbeat()``: report one heartbeat and wait for Kafka to have it."""
        self._beats += 1
        sent_at = asyncio.get_running_loop().time()
        beat = self._report(ReportTaskHeartbeat, f"heartbeat/{self._beats}")
        await (await self._send(beat))
        self._alive_at = max(self._alive_at, sent_at)

    async def _heartbeat_quietly(self) -> None:
        try:
            await self._heartbeat()
        except Exception as exc:  # the liveness deadline is what acts on a lost heartbeat
            self.ctx.logger.warning("heartbeat not delivered: %r", exc)

    # -- reports ------------------------------------------------------------------------------

    def _report(self, kind_type: Callable[..., C], kind: str, **fields: Any) -> C:
        d = self.dispatch
        return kind_type(
            command_id=f"{d.run_id}/{d.step_id}/{d.attempt}/{kind}",
            run_id=d.run_id,
            issued_at_ms=now_ms(),
            correlation_id=d.correlation_id,
            step_id=d.step_id,
            attempt=d.attempt,
            worker_id=self._reporter.worker_id,
            **fields,
        )

    async def _send(self, command: Command) -> asyncio.Future[Any]:
        return await self._reporter.send(command, self._headers)

    async def _send_outcome(self, outcome: Command) -> asyncio.Future[Any]:
        self.outcome = outcome
        try:
            return await self._send(outcome)
        except (codec.CodecError, RecordTooLarge) as exc:  # not JSON, or too large to report
            output = getattr(outcome, "output", None)
            self.ctx.logger.error("output cannot be reported: %s", exc)
            if isinstance(exc, RecordTooLarge):
                self.error = RecordTooLarge(
                    f"agent {self.agent.capability!r} returned an output too large to report: {exc}"
                )
            else:
                self.error = TypeError(
                    f"agent {self.agent.capability!r} returned a value that is not JSON "
                    f"({type(output).__name__}): {exc}"
                )
            failed = self._report(
                ReportTaskFailed, "failed", error=describe(self.error), retryable=False
            )
            self.outcome = failed
            return await self._send(failed)
