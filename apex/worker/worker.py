"""The worker: consumes task dispatches, runs agents, reports outcomes.

    worker = Worker(Settings.from_env(), agents=[summarize, classify])
    await worker.run()          # until worker.stop()

Each capability is a *lane*: one consumer in the group
``<prefix>workers.<capability>`` reading ``<prefix>tasks.<capability>``, and a
concurrency limit. A lane takes up to as many dispatches again as it has
slots into a backlog, in the order fetched, and starts the next one from it the
moment a slot frees; when slots and backlog are both full it pauses its
partitions but keeps polling, so the group does not evict a worker whose tasks
are merely long, and resumes once the backlog is half empty. Taking only as
many records as slots were free made a busy lane pause again and again, and
the consumer drops a paused partition's fetched records and fetches them again:
at 1,000 fan-out runs in flight the backlog cut the broker's CPU by a quarter
and the worker's memory by 45 % (benchmarks/RESULTS.md).

Delivery is at least once. A dispatch's offset is committed only when the
outcome report of that dispatch, and of every dispatch before it in its
partition, has been acknowledged by Kafka (idempotent producer, ``acks=all``).
Whatever was not finished when a worker stops, crashes or loses a partition
is delivered again; the decider drops repeated reports by (run, step, attempt).

Stopping (:meth:`Worker.stop`, SIGTERM/SIGINT through :mod:`apex.worker.runner`):
fetching stops at once; in-flight tasks get ``grace_s`` to finish (a second
``stop()`` ends the grace at once); then the rest have ``ctx.cancelled`` set
and are cancelled, *without* a report and without committing their offsets,
so they are redelivered. The worker commits what is done and leaves its groups.

Telemetry (when set up): each attempt runs in a ``process apex.tasks.<capability>``
span, child of the context the dispatch carries (the orchestrator's ``send``
span), with the agent's error recorded on it; its context goes into the
attempt's reports, so the orchestrator's handling of them joins the same trace.
With tracing off the dispatch's context is passed on to the reports unchanged.
Metrics: attempts by outcome, schedule-to-start and duration by capability,
dead letters, and each lane's consumer lag.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from apex import codec
from apex.config import Settings
from apex.domain.commands import ReportTaskFailed, ReportTaskSucceeded
from apex.domain.messages import TaskDispatch
from apex.kafka.clients import make_consumer, make_producer
from apex.kafka.dlq import dead_letter
from apex.kafka.topology import TopologyError, ensure_topics, task_topic
from apex.telemetry import flags, metrics, tracing
from apex.telemetry.logs import run_id_var
from apex.worker.agent import Agent
from apex.worker.alarms import Alarms
from apex.worker.errors import DEFAULT_NON_RETRYABLE
from apex.worker.execution import CANCEL_WAIT_S, Reporter, TaskRun
from apex.worker.offsets import PartitionOffsets

log = logging.getLogger("apex.worker")

POLL_MS = 200
"""How long a fetch waits for records; it also bounds how late a stop is noticed."""


class WorkerError(RuntimeError):
    """The worker could not go on (a report could not be delivered, a consumer failed)."""


@dataclass
class WorkerStats:
    succeeded: int = 0
    failed: int = 0
    dead_letters: int = 0
    cancelled: int = 0
    """Tasks cancelled at shutdown, left uncommitted for redelivery."""


class Worker:
    """Runs ``agents`` until :meth:`stop`; see the module documentation."""

    def __init__(
        self,
        settings: Settings,
        agents: Iterable[Agent],
        worker_id: str | None = None,
        *,
        concurrency: int | None = None,
        grace_s: float | None = None,
        non_retryable: tuple[type[BaseException], ...] = DEFAULT_NON_RETRYABLE,
    ) -> None:
        """``concurrency`` overrides every agent's limit (the CLI's ``--concurrency``);
        ``grace_s`` defaults to ``APEX_WORKER_GRACE_S``; ``non_retryable`` applies
        to agents that do not declare their own."""
        self.settings = settings
        self.agents = _by_capability(agents)
        self.worker_id = (
            worker_id or settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        )
        self.concurrency = concurrency
        self.grace_s = settings.worker_grace_s if grace_s is None else grace_s
        self.non_retryable = non_retryable
        self.stats = WorkerStats()
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._failure: BaseException | None = None

    def group_of(self, capability: str) -> str:
        """The consumer group of this capability's workers."""
        return f"{self.settings.topic_prefix}workers.{capability}"

    async def run(self) -> None:
        """Consume and execute until :meth:`stop`; raise :class:`WorkerError` on failure.

        A worker runs once: after ``run()`` returns, make a new one.
        """
        producer = make_producer(
            self.settings,
            client_id=f"apex-worker-{self.worker_id}",
            linger_ms=self.settings.worker_linger_ms,
        )
        try:
            await ensure_topics(self.settings, list(self.agents))
            await producer.start()
        except (KafkaError, TopologyError) as exc:
            await producer.stop()
            raise WorkerError(
                f"worker {self.worker_id} cannot start: Kafka at {self.settings.kafka_bootstrap} "
                f"answered {exc!r} (is it running? `apex dev status`)"
            ) from exc
        reporter = Reporter(producer, self.settings, self.worker_id)
        lanes = [_Lane(self, agent, reporter) for agent in self.agents.values()]
        fetchers: list[asyncio.Task[None]] = []
        try:
            for lane in lanes:
                await lane.start()
            fetchers = [asyncio.create_task(lane.fetch(self._stopping)) for lane in lanes]
            log.info(
                "worker %s running %s",
                self.worker_id,
                ", ".join(f"{lane.agent.capability} (x{lane.limit})" for lane in lanes),
            )
            stopped = asyncio.ensure_future(self._stopping.wait())
            done, _ = await asyncio.wait({*fetchers, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                await task  # a fetcher that ended before stop() failed: raise its error
        except Exception as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            self._hurry.set()  # cancelled from outside: no grace period
            raise
        finally:
            self._stopping.set()
            await asyncio.gather(*fetchers, return_exceptions=True)
            await self._drain(lanes)
            for lane in lanes:
                await lane.close()
            await producer.stop()
            log.info("worker %s stopped: %s", self.worker_id, self.stats)
        if self._failure is not None:
            raise WorkerError(f"worker {self.worker_id} failed: {self._failure!r}") from (
                self._failure
            )

    def stop(self) -> None:
        """Stop fetching and begin the graceful shutdown; a second call skips the grace."""
        if self._stopping.is_set():
            self._hurry.set()
        self._stopping.set()

    # -- shutdown -----------------------------------------------------------------------

    async def _drain(self, lanes: Sequence[_Lane]) -> None:
        """Give in-flight tasks the grace period, cancel the rest, commit what is done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_s
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            while not self._hurry.is_set():
                inflight = {task for lane in lanes for task in lane.runs}
                remaining = deadline - loop.time()
                if not inflight or remaining <= 0:
                    break
                await asyncio.wait(
                    {*inflight, hurry}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            hurry.cancel()
        leftovers = [task for lane in lanes for task in lane.cancel_all()]
        if leftovers:
            self.stats.cancelled += len(leftovers)
            log.warning(
                "grace period over: %d task(s) cancelled without a report; they will be "
                "delivered again",
                len(leftovers),
            )
            await asyncio.wait(leftovers, timeout=CANCEL_WAIT_S)
        for lane in lanes:
            await lane.commit(quiet=True)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            log.critical("worker %s is stopping after an error: %r", self.worker_id, exc)
        self.stop()
        self._hurry.set()  # the producer or a consumer is broken: waiting would not help


class _Lane:
    """One capability of a worker: its consumer, its limit, its tasks in flight."""

    def __init__(self, worker: Worker, agent: Agent, reporter: Reporter) -> None:
        settings = worker.settings
        self.worker = worker
        self.agent = agent
        self.limit = worker.concurrency or agent.concurrency or settings.worker_concurrency
        self.runs: dict[asyncio.Task[None], TaskRun | None] = {}
        self.backlog: deque[tuple[TopicPartition, Any, PartitionOffsets]] = deque()
        """Fetched, received by its partition's offsets, waiting for a slot."""
        self.offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._reporter = reporter
        self._heartbeat_s = agent.heartbeat_s or settings.worker_heartbeat_s or None
        self._started_after_s = settings.worker_started_after_ms / 1000
        self._non_retryable = (
            worker.non_retryable if agent.non_retryable is None else agent.non_retryable
        )
        self._backlog_low = asyncio.Event()
        self._alarms = Alarms()
        group = worker.group_of(agent.capability)
        self.group = group
        self.consumer: AIOKafkaConsumer = make_consumer(
            settings,
            group_id=group,
            client_id=f"{group}-{worker.worker_id}",
            refetch_later=True,  # a task's reports go out before the next fetch
        )
        self.consumer.subscribe([task_topic(settings, agent.capability)], listener=_Rebalance(self))

    async def start(self) -> None:
        await self.consumer.start()
        metrics.watch_consumer(self.consumer, self.group)

    async def close(self) -> None:
        metrics.unwatch_consumer(self.consumer)
        await self.consumer.stop()  # leaves the group: the partitions move on at once

    # -- fetching ---------------------------------------------------------------------

    async def fetch(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        interval = self.worker.settings.worker_commit_interval_s
        next_commit = loop.time() + interval
        while not stopping.is_set():
            room = 2 * self.limit - len(self.runs) - len(self.backlog)
            if room > 0:
                if self.consumer.paused():
                    self.consumer.resume(*self.consumer.paused())
                batch = await self.consumer.getmany(timeout_ms=POLL_MS, max_records=room)
                self._take(batch)
            else:
                await self._idle_until_backlog_low(stopping)
            if loop.time() >= next_commit:
                await self.commit(quiet=True)
                next_commit = loop.time() + interval

    async def _idle_until_backlog_low(self, stopping: asyncio.Event) -> None:
        """Full: pause fetching, but keep polling so the group sees a live member."""
        self.consumer.pause(*self.consumer.assignment())
        self._backlog_low.clear()
        poll = asyncio.ensure_future(self.consumer.getmany(timeout_ms=10 * POLL_MS))
        waits = {poll, asyncio.ensure_future(self._backlog_low.wait())}
        waits.add(asyncio.ensure_future(stopping.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if poll.done() and not poll.cancelled() and poll.exception() is None:
            # Records of partitions assigned while we were paused: no room for them,
            # so rewind; they are fetched again once the backlog is half empty.
            for tp, records in poll.result().items():
                if records:
                    self.consumer.seek(tp, records[0].offset)

    def _take(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Received from now on (uncommitted until done): into the backlog, then started."""
        for tp, records in batch.items():
            offsets = self.offsets.get(tp)
            if offsets is None:
                continue  # revoked meanwhile: its new owner reads it from the committed offset
            for record in records:
                offsets.received(record.offset)
                self.backlog.append((tp, record, offsets))
        self._start_from_backlog()

    def _start_from_backlog(self) -> None:
        if self.worker._stopping.is_set():
            return  # fetching has stopped: what waits stays pending, to be delivered again
        backlog = self.backlog
        while backlog and len(self.runs) < self.limit:
            _, record, offsets = backlog.popleft()
            self.runs[asyncio.create_task(self._process(record, offsets))] = None
        if len(backlog) <= self.limit // 2:
            self._backlog_low.set()

    async def _process(self, record: Any, offsets: PartitionOffsets) -> None:
        """One dispatch, from its record to its acknowledged outcome; then its slot is free.

        Its own bookkeeping, rather than a done callback: one callback less per step.
        """
        task = asyncio.current_task()
        assert task is not None
        try:
            await self._handle(record, task)
            offsets.done(record.offset)  # only now: its outcome is in Kafka
        except Exception as exc:  # a report or dead letter not delivered: its offset is stuck
            self.worker._fail(exc)
        finally:
            self.runs.pop(task, None)
            self._start_from_backlog()

    async def _handle(self, record: Any, task: asyncio.Task[None]) -> None:
        try:
            dispatch = codec.decode_dispatch(record.value)
            if dispatch.capability != self.agent.capability:
                raise ValueError(
                    f"dispatch for capability {dispatch.capability!r} on the task topic of "
                    f"{self.agent.capability!r}"
                )
        except ValueError as exc:  # CodecError included: set aside, go on
            if flags.TRACING:
                with tracing.consumer_span(record, group=self.group) as span:
                    tracing.record_error(span, exc)
                    await self._dead_letter(record, exc)
            else:
                await self._dead_letter(record, exc)
            return
        # The logs of this dispatch carry its run id. Each dispatch has a task of its
        # own, hence a context of its own: set, never reset (cheaper than bind_run).
        run_id_var.set(dispatch.run_id)
        if flags.TRACING:
            await self._execute_traced(record, dispatch, task)
        else:
            await self._execute(self._task_run(dispatch, record.headers), task)

    def _task_run(
        self, dispatch: TaskDispatch, headers: Iterable[tuple[str, bytes]] | None
    ) -> TaskRun:
        return TaskRun(
            self.agent,
            dispatch,
            self._reporter,
            heartbeat_s=self._heartbeat_for(dispatch.timeout_ms),
            started_after_s=self._started_after_s,
            grace_s=self.worker.grace_s,
            non_retryable=self._non_retryable,
            headers=headers,
            alarms=self._alarms,
        )

    async def _execute(self, run: TaskRun, task: asyncio.Task[None]) -> None:
        self.runs[task] = run
        await run.run()
        if isinstance(run.outcome, ReportTaskSucceeded):
            self.worker.stats.succeeded += 1
        else:
            self.worker.stats.failed += 1
        if flags.METRICS:
            self._measure(run)

    async def _execute_traced(
        self, record: Any, dispatch: TaskDispatch, task: asyncio.Task[None]
    ) -> None:
        """The attempt inside its span; the reports carry the span's context."""
        attributes = {
            tracing.RUN_ID: dispatch.run_id,
            tracing.STEP_ID: dispatch.step_id,
            tracing.ATTEMPT: dispatch.attempt,
            tracing.CAPABILITY: dispatch.capability,
        }
        with tracing.consumer_span(record, group=self.group, attributes=attributes) as span:
            run = self._task_run(dispatch, tracing.headers_of(span))
            await self._execute(run, task)
            outcome = run.outcome
            if isinstance(outcome, ReportTaskFailed):
                span.set_attribute(tracing.OUTCOME, "failed")
                span.set_attribute("apex.retryable", outcome.retryable)
                tracing.record_error(span, run.error or outcome.error, description=outcome.error)
            else:
                span.set_attribute(tracing.OUTCOME, "succeeded")

    def _measure(self, run: TaskRun) -> None:
        instruments = metrics.get()
        outcome = "succeeded" if isinstance(run.outcome, ReportTaskSucceeded) else "failed"
        capability = {"capability": self.agent.capability}
        with_outcome = {**capability, "outcome": outcome}
        instruments.worker_tasks.add(1, with_outcome)
        waited = run.started_at - run.dispatch.dispatched_at_ms / 1000
        instruments.schedule_to_start.record(max(0.0, waited), capability)
        instruments.step_duration.record(max(0.0, run.finished_at - run.started_at), with_outcome)

    def _heartbeat_for(self, timeout_ms: int | None) -> float | None:
        if self._heartbeat_s is not None:
            return self._heartbeat_s
        return timeout_ms / 3000 if timeout_ms else None

    async def _dead_letter(self, record: Any, error: Exception) -> None:
        log.error(
            "dispatch at %s[%d]@%d to the DLQ: %s",
            record.topic,
            record.partition,
            record.offset,
            error,
        )
        stage = f"worker.{self.agent.capability}"
        letter = dead_letter(self.worker.settings, record, stage, error)
        await (await self._reporter.send_dead_letter(letter))
        self.worker.stats.dead_letters += 1
        if flags.METRICS:
            metrics.get().dlq.add(1, {"stage": stage})

    def cancel_all(self) -> list[asyncio.Task[None]]:
        """Cancel the tasks in flight: no report, no commit, so they are redelivered."""
        tasks = list(self.runs)
        for task, run in self.runs.items():
            if run is not None:
                run.ctx.cancelled.set()
            task.cancel()
        return tasks

    # -- offsets ------------------------------------------------------------------------

    async def commit(self, *, quiet: bool = False, only: Iterable[TopicPartition] = ()) -> None:
        """Commit each partition up to its lowest unfinished offset."""
        wanted = set(only) or set(self.offsets)
        targets = {
            tp: (offsets, offset)
            for tp, offsets in self.offsets.items()
            if tp in wanted and (offset := offsets.committable()) is not None
        }
        if not targets:
            return
        try:
            await self.consumer.commit({tp: offset for tp, (_, offset) in targets.items()})
        except KafkaError as exc:
            if not quiet:
                raise
            # A rebalance is under way: revocation commits, or the next owner redelivers.
            log.warning("offset commit of %s skipped: %r", self.agent.capability, exc)
            return
        for offsets, offset in targets.values():
            offsets.committed(offset)

    async def acquire(self, assigned: Sequence[TopicPartition]) -> None:
        for tp in assigned:
            self.offsets.setdefault(tp, PartitionOffsets())

    async def release(self, revoked: Sequence[TopicPartition]) -> None:
        # What waits in the backlog is pending: the commit stops below it, and the
        # partition's next owner receives it again. It must not start here.
        gone = set(revoked)
        self.backlog = deque(entry for entry in self.backlog if entry[0] not in gone)
        if len(self.backlog) <= self.limit // 2:
            self._backlog_low.set()  # a lane idling because it was full fetches again
        await self.commit(quiet=True, only=revoked)
        for tp in revoked:
            self.offsets.pop(tp, None)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, lane: _Lane) -> None:
        self._lane = lane

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._lane.release(list(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self._lane.acquire(list(assigned))


def _by_capability(agents: Iterable[Agent]) -> dict[str, Agent]:
    found: dict[str, Agent] = {}
    for item in agents:
        if not isinstance(item, Agent):
            raise TypeError(
                f"Worker agents must be functions decorated with @agent(...), got {item!r}"
            )
        if item.capability in found and found[item.capability] is not item:
            raise ValueError(
                f"two agents for capability {item.capability!r}: {found[item.capability]!r} and "
                f"{item!r}; a worker runs one agent per capability"
            )
        found[item.capability] = item
    if not found:
        raise ValueError("a Worker needs at least one agent")
    return found
