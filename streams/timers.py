"""Durable timers: ``TimerScheduled`` events in, ``FireTimer`` commands out.

The timer service keeps no store of its own. For each ``apex.events`` partition
it owns, it folds the partition from the beginning through the same ``evolve``
the orchestrator uses, so the pending timers of a run are exactly
``RunState.timers`` — after a restart they are rebuilt from the log and none is
lost. A timer is fired by sending ``FireTimer`` with a deterministic command id;
it is sent again if no ``TimerFired`` follows within ``APEX_TIMER_RESEND_MS``.
Firing twice is harmless: the decider ignores a timer that is no longer pending.

Telemetry (when set up): a ``FireTimer`` is sent inside a ``send apex.commands``
span, child of the context its ``TimerScheduled`` event carries (the
orchestrator's decision that set the timer), so the firing and what it causes
stay in the run's trace; metrics count the timers fired and the consumer's lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from apex import codec
from apex.clock import now_ms
from apex.config import Settings
from apex.domain.commands import FireTimer
from apex.domain.events import TimerScheduled
from apex.domain.state import RunState, evolve
from apex.kafka.clients import make_consumer, make_producer
from apex.kafka.topology import ensure_topics
from apex.telemetry import flags, metrics, tracing
from apex.telemetry.propagation import Headers, extract, trace_headers

log = logging.getLogger("apex.timers")

_RESEND_MS = 30_000


@dataclass
class _Partition:
    runs: dict[str, RunState] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)


@dataclass
class TimerStats:
    events: int = 0
    fired: int = 0
    pending: int = 0


class TimerService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.group = f"{settings.topic_prefix}timers"
        self.stats = TimerStats()
        self._events_topic = settings.topic("events")
        self._parts: dict[int, _Partition] = {}
        self._heap: list[tuple[int, str, str, int]] = []  # (due ms, run, timer, partition)
        self._scheduled: set[tuple[str, str]] = set()  # (run, timer) in the heap
        self._contexts: dict[tuple[str, str], Headers] = {}
        """With tracing on: the trace headers of each pending timer's ``TimerScheduled``."""
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    async def run(self) -> None:
        await ensure_topics(self.settings)
        self._producer = make_producer(self.settings)
        await self._producer.start()
        consumer = make_consumer(self.settings, group_id=self.group)
        self._consumer = consumer
        consumer.subscribe([self._events_topic], listener=_Rebalance(self))
        await consumer.start()
        metrics.watch_consumer(consumer, self.group)
        firing = asyncio.create_task(self._fire_loop())
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, records in batch.items():
                    part = self._parts.get(tp.partition)
                    if part is not None:
                        self._apply(tp.partition, part, records)
                if firing.done():
                    firing.result()  # surface a crash of the firing loop
        finally:
            firing.cancel()
            metrics.unwatch_consumer(consumer)
            await consumer.stop()
            await self._producer.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    # -- folding the log --------------------------------------------------------------

    def _apply(self, partition: int, part: _Partition, records: Sequence[Any]) -> None:
        for record in records:
            event = codec.decode_event(record.value)
            self.stats.events += 1
            if event.run_id in part.finished:
                continue
            if flags.TRACING and isinstance(event, TimerScheduled):
                self._contexts[(event.run_id, event.timer_id)] = trace_headers(record.headers)
            state = evolve(part.runs.get(event.run_id), event)
            if state is None:
                continue
            if state.status.finished:
                part.runs.pop(event.run_id, None)
                part.finished.add(event.run_id)
                continue
            part.runs[event.run_id] = state
            for timer in state.timers.values():
                if (event.run_id, timer.timer_id) not in self._scheduled:
                    self._scheduled.add((event.run_id, timer.timer_id))
                    heapq.heappush(
                        self._heap, (timer.fire_at_ms, event.run_id, timer.timer_id, partition)
                    )
        self._wake.set()

    # -- firing --------------------------------------------------------------------------

    async def _fire_loop(self) -> None:
        while not self._stopping.is_set():
            now = now_ms()
            while self._heap and self._heap[0][0] <= now:
                _due, run_id, timer_id, partition = heapq.heappop(self._heap)
                if self._pending(partition, run_id, timer_id):
                    await self._fire(run_id, timer_id, now)
                    # Again later if no TimerFired arrives (the send may be lost with us).
                    heapq.heappush(self._heap, (now + _RESEND_MS, run_id, timer_id, partition))
                else:
                    self._scheduled.discard((run_id, timer_id))
                    self._contexts.pop((run_id, timer_id), None)
            self.stats.pending = len(self._heap)
            delay = (self._heap[0][0] - now) / 1000 if self._heap else 1.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, min(delay, 1.0)))

    def _pending(self, partition: int, run_id: str, timer_id: str) -> bool:
        part = self._parts.get(partition)
        state = part.runs.get(run_id) if part is not None else None
        return state is not None and timer_id in state.timers

    async def _fire(self, run_id: str, timer_id: str, now: int) -> None:
        assert self._producer is not None
        command = FireTimer(
            command_id=f"timer/{run_id}/{timer_id}",
            run_id=run_id,
            issued_at_ms=now,
            timer_id=timer_id,
        )
        topic = self.settings.topic("commands")
        value = codec.encode_command(command)
        if flags.TRACING:
            with tracing.producer_span(
                topic,
                key=run_id,
                context=extract(self._contexts.get((run_id, timer_id))),
                attributes={
                    tracing.RUN_ID: run_id,
                    tracing.COMMAND_TYPE: "FireTimer",
                    "apex.timer_id": timer_id,
                },
            ) as headers:
                await self._producer.send_and_wait(
                    topic, value, key=run_id.encode(), headers=headers
                )
        else:
            await self._producer.send_and_wait(topic, value, key=run_id.encode())
        self.stats.fired += 1
        if flags.METRICS:
            metrics.get().timers_fired.add(1)
        log.debug("fired %s of run %s", timer_id, run_id)

    # -- partition ownership ----------------------------------------------------------------

    async def _acquire(self, tps: Sequence[TopicPartition]) -> None:
        assert self._consumer is not None
        for tp in tps:
            self._parts[tp.partition] = _Partition()
            # Always from the beginning: the pending timers are a fold of the whole log.
            await self._consumer.seek_to_beginning(tp)
            log.info("timers: partition %d acquired, folding from the start", tp.partition)

    async def _release(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            self._parts.pop(tp.partition, None)
        self._heap = [entry for entry in self._heap if entry[3] in self._parts]
        heapq.heapify(self._heap)
        self._scheduled = {(run, timer) for _, run, timer, _ in self._heap}
        self._contexts = {k: v for k, v in self._contexts.items() if k in self._scheduled}


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: TimerService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._service._release(list(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self._service._acquire(list(assigned))
