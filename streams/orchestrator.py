"""The orchestrator: commands in, decisions out, exactly once.

For every partition of ``apex.commands`` it owns, the orchestrator keeps the
state of that partition's runs (rebuilt from the same partition of
``apex.events`` when it gets the partition) and, per batch of commands, runs the
pure decider and in ONE Kafka transaction appends the events, sends task
dispatches and results, and commits the consumed offsets. Each partition is
decided by a task of its own, one transaction after another, at its own pace:
a slow transaction on one partition holds up no other, and what arrives while a
transaction is in flight makes that partition's next batch. What waits is
bounded: a partition's fetching pauses while ``BACKLOG_BATCHES`` batches of its
commands wait.

Why not faust's ``exactly_once`` mode: it logs, rather than raises, failed
begin/commit calls and has open duplicate-on-rebalance issues (#323, #517). Why
one transactional producer per input partition (``<group>-<partition>``):
aiokafka's ``send_offsets_to_transaction`` carries no group generation
(KIP-447), so a zombie that lost a partition is fenced only by the next owner
re-initialising the same transactional id (aiokafka #844). The next owner does
that *before* it reads the partition's events and committed offset, so it sees
exactly what the previous owner committed and nothing it left half-done.

Where the commands of a partition resume rides in the log, not in the group:
a transaction that appends events puts the offset of the next command in an
``apex.consumed`` header of its last event on the partition's own events
partition (the one the next owner folds anyway), and sends no offsets to the
group. That spares two broker round trips and a group-coordinator write per
transaction (AddOffsetsToTxn, TxnOffsetCommit: ~2.4 ms of a ~7 ms one-record
transaction, ~40 % of the broker's CPU for it; ``benchmarks.kafka_transactions
--no-offsets``). A transaction with no event on that partition (dead letters
only) still sends its offsets to the group, so nothing it wrote can be written
twice. The next owner resumes at the later of the two. The group's committed
offset is also refreshed outside the transactions about once a second and when
a partition is released — only a hint for lag monitoring and for a quicker
resume: commands after it that yielded nothing yield nothing again from the
same state. A hint is committed between transactions, never during one: one
landing after a later dead-letter-only transaction's offsets would take the
group back before them, and those dead letters would be written again.

A transaction that fails stops the orchestrator with an error: it is never
logged and skipped. Bad input (undecodable bytes, a key that is not the run id,
a decider error) goes to ``apex.dlq`` inside the same transaction and
processing goes on.

Telemetry (only when set up; off, it costs a flag check per batch): every
command gets a ``process apex.commands`` span, child of the context its
headers carry (the client's send, or the worker span that reported), and that
span's context goes into every event and result it yields; each dispatch gets
a ``send apex.tasks.<capability>`` span of its own, the parent of the worker's
execution. Each run's first context (its ``StartRun`` span's, rebuilt from
``RunStarted``'s headers after a failover) is kept while it runs: a command
that carries no context (an uninstrumented client, a script) or the context of
another trace (a client that opened its own trace) is handled as a child of
it, linked to the caller's span, so one run stays one trace. Metrics count
commands and events by type and time each decision and each transaction.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from opentelemetry.trace import Span, SpanContext

from apex import codec
from apex.catalog import DefinitionCatalog
from apex.chain import CHAIN_HEADER, GENESIS, chain_of, link
from apex.config import Settings
from apex.domain import commands as cmd
from apex.domain.decider import decide_and_evolve
from apex.domain.events import Event
from apex.domain.messages import RunResult, StepResult, TaskDispatch
from apex.domain.outbox import outbound
from apex.domain.state import RunState, evolve, retire
from apex.kafka.clients import (
    Record,
    RecordTooLarge,
    make_consumer,
    make_producer,
    oversize,
    partition_for,
    send_batched,
)
from apex.kafka.dlq import dead_letter
from apex.kafka.topology import ensure_topics, task_topic
from apex.telemetry import flags, tracing
from apex.telemetry import metrics as telemetry_metrics
from apex.telemetry.propagation import Headers

log = logging.getLogger("apex.orchestrator")

_Out = Record
"""One record to produce: topic, key, value, headers."""

CONSUMED_HEADER = "apex.consumed"
"""On a transaction's last event: the offset of the next command of its partition (ASCII)."""
HINT_S = 1.0
"""How often the group's committed offsets are refreshed from the transactions' own."""
DEFINITIONS_REFRESH_S = 1.0
"""Most often a run started without a version makes the catalog read ``apex.definitions``
to its end (see ``Orchestrator._resolve_definition``)."""

BACKLOG_BATCHES = 4
"""A partition's fetching pauses while this many batches of its commands wait."""


class TransactionFailed(RuntimeError):
    """A Kafka transaction of the orchestrator failed; the process must stop."""


@dataclass
class _Partition:
    tp: TopicPartition
    producer: AIOKafkaProducer
    runs: dict[str, RunState] = field(default_factory=dict)
    chains: dict[str, bytes] = field(default_factory=dict)
    """Each run's last ``apex.chain`` hash."""
    trace_roots: dict[str, SpanContext] = field(default_factory=dict)
    """With tracing on: each running run's first span context (its ``RunStarted``'s)."""
    consumed: int | None = None
    """The offset of the next command, as the last committed transaction recorded it."""
    hinted: int | None = None
    """The offset last committed to the group outside a transaction."""
    pending: list[Any] = field(default_factory=list)
    """Commands fetched and not yet decided (at most one batch's worth is being decided)."""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held for a transaction and for a hint: a hint never lands inside a transaction."""
    paused: bool = False
    """Fetching paused: ``pending`` reached the backlog bound."""
    released: bool = False
    next_hint: float = 0.0
    driver: asyncio.Task[None] | None = None


@dataclass
class _Batch:
    """What a batch changes; applied to the partition only once its transaction commits."""

    runs: dict[str, RunState] = field(default_factory=dict)
    chains: dict[str, bytes] = field(default_factory=dict)
    trace_roots: dict[str, SpanContext | None] = field(default_factory=dict)
    """Runs that began (their context) or ended (``None``) in this batch; tracing only."""
    measured: _Measured | None = None
    """With metrics on: what the batch's metrics will count once it commits."""


@dataclass
class _Measured:
    commands: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    decisions: list[float] = field(default_factory=list)
    dead_letters: int = 0

    def record(self, transaction_s: float) -> None:
        instruments = telemetry_metrics.get()
        for command_type, n in self.commands.items():
            instruments.commands.add(n, {"command_type": command_type})
        for event_type, n in self.events.items():
            instruments.events.add(n, {"event_type": event_type})
        if retries := self.events.get("StepRetryScheduled"):
            instruments.retries.add(retries)
        if timeouts := self.events.get("StepTimedOut"):
            instruments.timeouts.add(timeouts)
        if self.dead_letters:
            instruments.dlq.add(self.dead_letters, {"stage": "orchestrator"})
        for seconds in self.decisions:
            instruments.decision_duration.record(seconds)
        instruments.transaction_duration.record(transaction_s)


@dataclass
class OrchestratorStats:
    commands: int = 0
    events: int = 0
    transactions: int = 0
    dead_letters: int = 0
    rebuilt_events: int = 0


class Orchestrator:
    def __init__(self, settings: Settings, *, commit_hints: bool = True) -> None:
        """``commit_hints=False``: never commit offsets to the group outside a
        transaction (tests use it to prove that a resume needs only the log)."""
        self.settings = settings
        self._commit_hints = commit_hints
        self._next_hint = 0.0
        self._definitions_due = 0.0
        self._partitions = 0
        self.group = f"{settings.topic_prefix}orchestrator"
        self.instance = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.stats = OrchestratorStats()
        self._commands_topic = settings.topic("commands")
        self._events_topic = settings.topic("events")
        self._results_topic = settings.topic("results")
        self._catalog = DefinitionCatalog(settings)
        self._consumer: AIOKafkaConsumer | None = None
        self._parts: dict[TopicPartition, _Partition] = {}
        self._failure: Exception | None = None
        self._task_topics: set[str] = set()
        self._task_topic_names: dict[str, str] = {}
        """Each capability's task topic, checked and named once (not per dispatch)."""
        self._stopping = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------

    async def run(self) -> None:
        """Process commands until :meth:`stop`; raises :class:`TransactionFailed`."""
        await ensure_topics(self.settings)
        await self._catalog.start()
        await self._ensure_task_topics(self._catalog.capabilities())
        consumer = make_consumer(
            self.settings,
            group_id=self.group,
            client_id=f"{self.group}-{self.instance}",
            refetch_later=True,  # a command's transaction goes out before the next fetch
        )
        self._consumer = consumer
        consumer.subscribe([self._commands_topic], listener=_Rebalance(self))
        await consumer.start()
        telemetry_metrics.watch_consumer(consumer, self.group)
        telemetry_metrics.observe_active_runs(self, self._active_runs)
        log.info("orchestrator %s started (group %s)", self.instance, self.group)
        try:
            while not self._stopping.is_set():
                fetched = await consumer.getmany(
                    timeout_ms=100, max_records=self.settings.orchestrator_batch
                )
                for tp, records in fetched.items():
                    part = self._parts.get(tp)
                    if part is not None and records:
                        self._enqueue(consumer, part, records)
                if self._failure is not None:
                    raise self._failure
                if self._commit_hints and time.monotonic() >= self._next_hint:
                    await self._hint_idle()
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self._stopping.set()

    async def _shutdown(self) -> None:
        telemetry_metrics.forget_active_runs(self)
        if self._consumer is not None:
            telemetry_metrics.unwatch_consumer(self._consumer)
            await self._consumer.stop()  # revokes: partitions are released by the listener
            self._consumer = None
        await self._release(list(self._parts))
        await self._catalog.stop()
        stats = self.stats
        log.info(
            "orchestrator %s stopped: %d commands in %d transactions (%.1f a transaction), "
            "%d events, %d dead letters",
            self.instance,
            stats.commands,
            stats.transactions,
            stats.commands / max(1, stats.transactions),
            stats.events,
            stats.dead_letters,
        )

    # -- partition ownership ------------------------------------------------------------

    async def _acquire(self, tps: Sequence[TopicPartition]) -> None:
        assert self._consumer is not None
        for tp in tps:
            if tp.topic != self._commands_topic or tp in self._parts:
                continue
            producer = make_producer(self.settings, transactional_id=f"{self.group}-{tp.partition}")
            await producer.start()  # init_transactions: fences the previous owner
            self._partitions = len(self._consumer.partitions_for_topic(tp.topic) or ())
            runs, chains, roots, recorded = await self._rebuild(tp.partition)
            committed = await self._consumer.committed(tp)
            known = [offset for offset in (committed, recorded) if offset is not None]
            start = max(known) if known else None
            if start is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, start)
            part = _Partition(tp, producer, runs, chains, roots, consumed=start, hinted=committed)
            part.driver = asyncio.create_task(self._drive(part), name=f"decide {tp.partition}")
            self._parts[tp] = part
            log.info(
                "partition %d acquired: %d runs rebuilt, commands from offset %s "
                "(recorded with the events: %s, committed to the group: %s)",
                tp.partition,
                len(runs),
                start,
                recorded,
                committed,
            )

    async def _release(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            part = self._parts.pop(tp, None)
            if part is None:
                continue
            async with part.lock:  # waits for the partition's transaction in flight
                part.released = True
                if self._commit_hints:  # the next owner resumes without replaying
                    await self._commit_hint({tp: part.consumed})
            if part.driver is not None:
                part.driver.cancel()
                await asyncio.gather(part.driver, return_exceptions=True)
            await part.producer.stop()
            log.info("partition %d released", tp.partition)

    async def _rebuild(
        self, partition: int
    ) -> tuple[dict[str, RunState], dict[str, bytes], dict[str, SpanContext], int | None]:
        """Fold the partition's events: the orchestrator's state comes from the log alone.

        Also returns the last ``apex.consumed`` offset the events recorded.
        """
        tp = TopicPartition(self._events_topic, partition)
        reader = make_consumer(self.settings, fetch_max_wait_ms=50)
        await reader.start()
        runs: dict[str, RunState] = {}
        chains: dict[str, bytes] = {}
        roots: dict[str, SpanContext] = {}
        recorded: int | None = None
        traced = flags.TRACING
        try:
            reader.assign([tp])
            await reader.seek_to_beginning(tp)
            end = (await reader.end_offsets([tp]))[tp]
            while await reader.position(tp) < end:
                batch = await reader.getmany(tp, timeout_ms=500, max_records=5000)
                for record in batch.get(tp, ()):
                    for name, value in record.headers:
                        if name == CONSUMED_HEADER:
                            recorded = int(value)
                    event = codec.decode_event(record.value)
                    state = evolve(runs.get(event.run_id), event)
                    if state is not None:
                        runs[event.run_id] = state
                        chains[event.run_id] = chain_of(record.headers) or GENESIS
                        if traced:
                            if event.seq == 1:
                                root = tracing.span_context_of(record.headers)
                                if root is not None:
                                    roots[event.run_id] = root
                            elif state.status.finished:
                                roots.pop(event.run_id, None)
                    self.stats.rebuilt_events += 1
        finally:
            await reader.stop()
        return _retired(runs), chains, roots, recorded

    # -- one batch, one transaction ---------------------------------------------------------

    def _enqueue(self, consumer: AIOKafkaConsumer, part: _Partition, records: list[Any]) -> None:
        """Hand fetched commands to their partition's driver; bound what waits."""
        part.pending += records
        part.arrived.set()
        if (
            not part.paused
            and len(part.pending) >= BACKLOG_BATCHES * self.settings.orchestrator_batch
        ):
            consumer.pause(part.tp)
            part.paused = True

    async def _drive(self, part: _Partition) -> None:
        """Decide one partition's commands, one transaction after another.

        Each partition goes at its own pace: a partition whose transaction is
        slow holds up no other (a batch for all of them waited for the slowest),
        and what arrives meanwhile makes its next batch.
        """
        size = self.settings.orchestrator_batch
        try:
            while True:
                await part.arrived.wait()
                part.arrived.clear()
                while part.pending:
                    async with part.lock:
                        if part.released:
                            return
                        records = part.pending[:size]
                        del part.pending[:size]
                        await self._process(part, records)
                        if self._commit_hints and time.monotonic() >= part.next_hint:
                            await self._hint([part])
                    if part.paused and len(part.pending) <= size and self._consumer is not None:
                        self._consumer.resume(part.tp)  # still assigned: not released
                        part.paused = False
        except Exception as exc:  # a failed transaction (or a bug): run() raises it and stops
            self._failure = exc

    async def _process(self, part: _Partition, records: Sequence[Any]) -> None:
        producer = part.producer
        batch = _Batch()
        if flags.METRICS:
            batch.measured = _Measured()
            started = time.perf_counter()
        consumed = records[-1].offset + 1
        try:
            await producer.begin_transaction()
            handle = self._handle_traced if flags.TRACING else self._handle
            out: list[_Out] = []
            for record in records:
                out += await handle(part, batch, record)
            recorded = self._record_consumed(part, out, consumed)
            await asyncio.gather(*await send_batched(producer, out))
            if not recorded:
                await producer.send_offsets_to_transaction({part.tp: consumed}, self.group)
            await producer.commit_transaction()
        except Exception as exc:
            log.critical(
                "transaction on %s[%d] failed, stopping: %r", part.tp.topic, part.tp.partition, exc
            )
            raise TransactionFailed(
                f"transaction for {part.tp.topic}[{part.tp.partition}] at offsets "
                f"{records[0].offset}..{records[-1].offset} failed: {exc!r}"
            ) from exc
        part.consumed = consumed
        part.runs.update(_retired(batch.runs))
        part.chains.update(batch.chains)
        for run_id, root in batch.trace_roots.items():
            if root is None:
                part.trace_roots.pop(run_id, None)
            else:
                part.trace_roots[run_id] = root
        self.stats.transactions += 1
        self.stats.commands += len(records)
        if batch.measured is not None:
            batch.measured.record(time.perf_counter() - started)

    def _record_consumed(self, part: _Partition, out: list[_Out], consumed: int) -> bool:
        """Put ``consumed`` on the last event bound for the partition's events partition."""
        if not self._partitions:
            return False
        for i in range(len(out) - 1, -1, -1):
            topic, key, value, headers = out[i]
            if (
                topic == self._events_topic
                and key is not None
                and partition_for(key, self._partitions) == part.tp.partition
            ):
                out[i] = (topic, key, value, [*headers, (CONSUMED_HEADER, b"%d" % consumed)])
                return True
        return False

    # -- the group's offsets: hints only ---------------------------------------------------

    async def _hint(self, parts: Sequence[_Partition]) -> None:
        """Commit the offsets of ``parts`` that moved since their last hint; hold their locks."""
        next_hint = time.monotonic() + HINT_S
        for part in parts:
            part.next_hint = next_hint
        await self._commit_hint(
            {part.tp: part.consumed for part in parts if part.consumed != part.hinted}
        )

    async def _hint_idle(self) -> None:
        """Hints for the partitions not deciding now (the busy ones hint between their
        transactions, in :meth:`_drive`)."""
        self._next_hint = time.monotonic() + HINT_S
        idle = [
            part
            for part in self._parts.values()
            if not part.lock.locked() and part.consumed != part.hinted
        ]
        for part in idle:  # free locks: taken without yielding, so none is taken meanwhile
            await part.lock.acquire()
        try:
            await self._hint(idle)
        finally:
            for part in idle:
                part.lock.release()

    async def _commit_hint(self, offsets: Mapping[TopicPartition, int | None]) -> None:
        wanted = {tp: offset for tp, offset in offsets.items() if offset is not None}
        if not wanted or self._consumer is None:
            return
        try:
            await self._consumer.commit(wanted)
        except Exception as exc:  # a hint: the log has the truth; a rebalance may refuse it
            log.info("offsets not committed to the group (a hint only): %r", exc)
            return
        for tp, offset in wanted.items():
            if (part := self._parts.get(tp)) is not None:
                part.hinted = offset

    async def _handle_traced(self, part: _Partition, batch: _Batch, record: Any) -> list[_Out]:
        """:meth:`_handle` inside the command's span (see the module documentation)."""
        unsampled = tracing.unsampled(record.headers)
        if unsampled is not None:  # its trace is not recorded: no span, the context passed on
            return await self._handle(part, batch, record, forwarded=unsampled)
        root = part.trace_roots.get(_key_text(record.key)) if record.key is not None else None
        parent, links = tracing.join_run(record.headers, root)
        with tracing.consumer_span(record, group=self.group, context=parent, links=links) as span:
            return await self._handle(part, batch, record, span)

    async def _handle(
        self,
        part: _Partition,
        batch: _Batch,
        record: Any,
        span: Span | None = None,
        forwarded: Headers | None = None,
    ) -> list[_Out]:
        """The records one command yields: events, dispatches, results, or a dead letter.

        ``span`` is the command's span (tracing on), ``forwarded`` the trace
        headers to pass on without one (an unsampled trace).
        """
        measured = batch.measured
        try:
            command = codec.decode_command(record.value)
            key = record.key.decode() if record.key is not None else None
            if key != command.run_id:
                raise ValueError(
                    f"record key {key!r} is not the command's run id {command.run_id!r}: "
                    "commands must be keyed by run id"
                )
            state = batch.runs.get(command.run_id) or part.runs.get(command.run_id)
            if isinstance(command, cmd.StartRun) and state is None:
                command = await self._resolve_definition(command)
            if measured is None:
                events, after = decide_and_evolve(state, command)
            else:
                started = time.perf_counter()
                events, after = decide_and_evolve(state, command)
                measured.decisions.append(time.perf_counter() - started)
                measured.commands[type(command).__name__] += 1
        except Exception as exc:  # bad input, or a decider bug: set aside, go on
            return self._dead_letter(batch, record, span, exc)
        headers: Headers = forwarded or []
        if span is not None:
            headers = tracing.headers_of(span)
        chain = batch.chains.get(command.run_id) or part.chains.get(command.run_id, GENESIS)
        out: list[_Out] = []
        for event in events:
            value = codec.encode_event(event)
            if event.seq == 0:  # a refusal that belongs to no run
                out.append(
                    (
                        self._events_topic,
                        record.key,
                        value,
                        [*headers, (CHAIN_HEADER, link(GENESIS, value))],
                    )
                )
                continue
            chain = link(chain, value)
            out.append((self._events_topic, record.key, value, [*headers, (CHAIN_HEADER, chain)]))
        out += self._outbound(command.run_id, events, after, headers, span)
        too_large = self._too_large(out)
        if too_large is not None:  # the decision is dropped: nothing of it is written
            return self._dead_letter(batch, record, span, too_large)
        if after is not None:
            batch.runs[command.run_id] = after
            batch.chains[command.run_id] = chain
        self.stats.events += len(events)
        if measured is not None:
            measured.events.update(type(event).__name__ for event in events)
        if span is not None:
            span.set_attributes(
                {
                    tracing.RUN_ID: command.run_id,
                    tracing.COMMAND_TYPE: type(command).__name__,
                    tracing.EVENTS: len(events),
                }
            )
            if after is not None and after.status.finished:
                batch.trace_roots[command.run_id] = None
            elif state is None and after is not None:
                batch.trace_roots[command.run_id] = span.get_span_context()
        return out

    def _too_large(self, out: list[_Out]) -> RecordTooLarge | None:
        """The error for the first record over ``max_record_bytes``, if one is.

        The broker would refuse it and, with it, the whole transaction: the
        orchestrator would stop, and stop again on the same command after a restart.
        """
        limit = self.settings.max_record_bytes
        for topic, key, value, headers in out:
            if (size := oversize(key, value, headers, limit)) is not None:
                return RecordTooLarge(
                    f"the decision would write a {size:,}-byte record to {topic} "
                    f"({codec.schema_name_of(value or b'')}), over the {limit:,}-byte limit "
                    "(APEX_MAX_RECORD_BYTES, at most the broker's message.max.bytes)"
                )
        return None

    def _dead_letter(
        self, batch: _Batch, record: Any, span: Span | None, exc: Exception
    ) -> list[_Out]:
        """The command set aside in ``apex.dlq`` with the reason; processing goes on."""
        log.error(
            "command at %s[%d]@%d to the DLQ: %s",
            record.topic,
            record.partition,
            record.offset,
            exc,
            extra={"run_id": _key_text(record.key)},
        )
        self.stats.dead_letters += 1
        if batch.measured is not None:
            batch.measured.dead_letters += 1
        if span is not None:
            tracing.record_error(span, exc)
        letter = dead_letter(self.settings, record, "orchestrator", exc)
        return [(letter.topic, letter.key, letter.value, letter.headers)]

    def _outbound(
        self,
        run_id: str,
        events: Sequence[Event],
        state: RunState | None,
        headers: Headers,
        span: Span | None,
    ) -> list[_Out]:
        key = run_id.encode()
        out: list[_Out] = []
        for message in outbound(state, events):
            if isinstance(message, TaskDispatch):
                topic = self._task_topic_names.get(message.capability)
                if topic is None:
                    topic = task_topic(self.settings, message.capability)
                    self._task_topic_names[message.capability] = topic
                dispatch_headers = headers
                if span is not None:  # the worker's span will be this one's child
                    dispatch_headers = tracing.send_span(
                        span,
                        topic,
                        key=run_id,
                        attributes={
                            tracing.RUN_ID: run_id,
                            tracing.STEP_ID: message.step_id,
                            tracing.ATTEMPT: message.attempt,
                            tracing.CAPABILITY: message.capability,
                        },
                    )
                out.append((topic, key, codec.encode_dispatch(message), dispatch_headers))
            elif isinstance(message, RunResult):
                out.append((self._results_topic, key, codec.encode_run_result(message), headers))
            elif isinstance(message, StepResult):
                out.append((self._results_topic, key, codec.encode_step_result(message), headers))
        return out

    async def _resolve_definition(self, command: cmd.StartRun) -> cmd.StartRun:
        """The command with its definition; without a version, the latest one registered
        up to :data:`DEFINITIONS_REFRESH_S` before the run is decided.

        The catalog reads the definitions topic only on a miss, so "latest" stayed
        the version it knew first: a StartRun without a version sent after version
        2 was registered ran version 1. Reading the topic to its end for every
        batch that starts such a run halved throughput at 100 concurrent runs
        (chain5: 1,340 -> 550 steps/s), so it is read at most once a second. A read
        that fails leaves the versions already known: the run is not dead-lettered.
        """
        if command.definition_version is None and time.monotonic() >= self._definitions_due:
            self._definitions_due = time.monotonic() + DEFINITIONS_REFRESH_S
            try:
                await self._catalog.refresh()
            except (KafkaError, OSError) as exc:  # the versions known still serve: no DLQ
                log.warning("definitions not read (a run takes the latest known): %r", exc)
        definition = await self._catalog.resolve(
            command.definition_name, command.definition_version
        )
        if definition is None:
            return command  # the decider rejects it, naming the definition
        await self._ensure_task_topics(step.capability for step in definition.steps)
        return replace(command, definition=definition)

    async def _ensure_task_topics(self, capabilities: Any) -> None:
        wanted = set(capabilities) - self._task_topics
        if wanted:
            await ensure_topics(self.settings, wanted)
            self._task_topics |= wanted

    def _active_runs(self) -> list[tuple[int, dict[str, Any]]]:
        """Runs not finished per owned partition; read on the metrics exporter's thread."""
        return [
            (
                sum(1 for state in list(part.runs.values()) if not state.status.finished),
                {"partition": str(part.tp.partition)},
            )
            for part in list(self._parts.values())
        ]


def _key_text(key: bytes | None) -> str:
    return key.decode("utf-8", "replace") if key is not None else ""


def _retired(runs: dict[str, RunState]) -> dict[str, RunState]:
    """Finished runs reduced to what later commands need: memory follows active runs."""
    return {run_id: retire(s) if s.status.finished else s for run_id, s in runs.items()}


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._orchestrator._release(list(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self._orchestrator._acquire(list(assigned))
