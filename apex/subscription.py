"""Subscriptions to ``apex.results``: independent readers, from now or from a point in time.

    async with client.subscribe(definition="triage", status="failed") as results:
        async for result in results:      # RunResult or StepResult
            ...

A subscription is a consumer of its own with **no consumer group**: it is
assigned every partition of the results topic (only the one partition of the
run when ``run_id`` is given, since results are keyed by run id) and decides
where to read itself. So any number of subscribers each see every result, and
none of them moves an offset another one depends on; nothing is committed.

Where it starts is fixed by :meth:`Subscription.start` (called by ``async
with``, or by the first ``async for`` step):

* ``from_time=None`` — *now*: the end of every partition at that moment, so it
  sees every result published after ``start`` returned (the end is Kafka's
  last stable offset: results of an orchestrator transaction still open then
  are seen when it commits, and so may be a few committed just before it);
* ``from_time=<datetime>`` — the first result of each partition whose Kafka
  timestamp (when the orchestrator published it) is at or after that time,
  found with ``offsets_for_times`` (a partition with none starts at its end).

Results are read ``read_committed``: only those of committed orchestrator
transactions, in each partition's order. A record that cannot be decoded is
logged and skipped (the orchestrator wrote it, so it is a schema problem for
an operator, not for this reader to stop on).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition

from apex import codec
from apex.config import Settings
from apex.domain.messages import RunResult, StepResult
from apex.kafka.clients import make_consumer, partition_for

__all__ = ["Result", "ResultKind", "Subscription", "partition_of"]

log = logging.getLogger(__name__)

Result = RunResult | StepResult
ResultKind = Literal["run", "step", "any"]


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as Java's) puts ``key`` in."""
    return partition_for(key.encode(), partitions)


class Subscription:
    """An async iterator over results that pass every filter given.

    ``definition`` is a workflow name or ``name@version``; ``status`` one
    status or several (completed, failed, cancelled for runs; succeeded, failed,
    ... for steps); ``kind`` keeps run results, step results or both; ``where``
    is any further predicate. ``idle_timeout_s`` ends the iteration after that
    long without a matching result (default: never); ``limit`` after that many.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        definition: str | None = None,
        run_id: str | None = None,
        status: str | Iterable[str] | None = None,
        kind: ResultKind = "any",
        from_time: datetime | None = None,
        where: Callable[[Result], bool] | None = None,
        idle_timeout_s: float | None = None,
        limit: int | None = None,
    ) -> None:
        if kind not in ("run", "step", "any"):
            raise ValueError(f"kind must be 'run', 'step' or 'any', got {kind!r}")
        if from_time is not None and from_time.tzinfo is None:
            raise ValueError(
                "from_time must be timezone-aware (e.g. datetime.now(UTC) - timedelta(minutes=5))"
            )
        self.settings = settings
        self.topic = settings.topic("results")
        self.definition = definition
        self.run_id = run_id
        self.statuses = (
            None if status is None else {status} if isinstance(status, str) else set(status)
        )
        self.kind = kind
        self.from_time = from_time
        self.where = where
        self.idle_timeout_s = idle_timeout_s
        self.limit = limit
        self.delivered = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._pending: deque[Result] = deque()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Subscription:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> Subscription:
        """Connect and fix the starting offsets; results published after this are seen."""
        if self._consumer is not None:
            return self
        if self._closed:
            raise RuntimeError("this subscription was closed: make a new one")
        consumer = make_consumer(self.settings, client_id="apex-subscriber")
        await consumer.start()
        try:
            tps = await self._partitions(consumer)
            consumer.assign(tps)
            await self._position(consumer, tps)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        return self

    async def close(self) -> None:
        self._closed = True
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    # -- iteration ---------------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Result:
        if self.limit is not None and self.delivered >= self.limit:
            await self.close()
            raise StopAsyncIteration
        if self._consumer is None:
            if self._closed:
                raise StopAsyncIteration
            await self.start()
        idle_since = time.monotonic()
        while not self._pending:
            consumer = self._consumer
            if consumer is None:  # closed meanwhile
                raise StopAsyncIteration
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    result = self._decode(record)
                    if result is not None and self.matches(result):
                        self._pending.append(result)
            if self._pending:
                break
            if (
                self.idle_timeout_s is not None
                and time.monotonic() - idle_since > self.idle_timeout_s
            ):
                await self.close()
                raise StopAsyncIteration
        self.delivered += 1
        return self._pending.popleft()

    async def collect(self) -> list[Result]:
        """Every result until the iteration ends (give ``idle_timeout_s`` or ``limit``)."""
        if self.idle_timeout_s is None and self.limit is None:
            raise ValueError("collect() would never return: give idle_timeout_s or limit")
        return [result async for result in self]

    def matches(self, result: Result) -> bool:
        if self.kind == "run" and not isinstance(result, RunResult):
            return False
        if self.kind == "step" and not isinstance(result, StepResult):
            return False
        if self.run_id is not None and result.run_id != self.run_id:
            return False
        if self.definition is not None and not _same_definition(self.definition, result.definition):
            return False
        if self.statuses is not None and result.status not in self.statuses:
            return False
        return self.where is None or self.where(result)

    # -- helpers -----------------------------------------------------------------------------

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        parts = consumer.partitions_for_topic(self.topic)
        deadline = time.monotonic() + 10
        while not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(self.topic)
            if parts:
                break
            if time.monotonic() > deadline:
                raise LookupError(
                    f"topic {self.topic} does not exist: is the prefix "
                    f"{self.settings.topic_prefix!r} right, and did anything start yet?"
                )
            await asyncio.sleep(0.2)
        if self.run_id is not None:
            return [TopicPartition(self.topic, partition_of(self.run_id, len(parts)))]
        return [TopicPartition(self.topic, p) for p in sorted(parts)]

    async def _position(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        ends = await consumer.end_offsets(tps)
        if self.from_time is None:
            starts = dict(ends)
        else:
            stamp = int(self.from_time.timestamp() * 1000)
            found = await consumer.offsets_for_times(dict.fromkeys(tps, stamp))
            starts = {tp: ends[tp] if found.get(tp) is None else found[tp].offset for tp in tps}
        # Explicit offsets, not seek_to_end(): that one is resolved lazily, at the
        # first fetch, and "now" would drift to whenever iteration begins.
        for tp in tps:
            consumer.seek(tp, starts[tp])

    def _decode(self, record: Any) -> Result | None:
        try:
            return codec.decode_result(record.value)
        except codec.CodecError as exc:
            log.error(
                "skipping undecodable result at %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
            return None


def _same_definition(wanted: str, actual: str) -> bool:
    """``wanted`` is ``name`` (any version) or ``name@version``; ``actual`` is ``name@version``."""
    if wanted == actual:
        return True
    name, _, _ = actual.rpartition("@")
    return name == wanted
