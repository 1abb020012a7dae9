"""Trigger rules on real Kafka: upstream business events in, commands out.

The service reads every upstream topic its rules name (consumer group
``<prefix>triggers``; it only reads them, and creates nothing but Apex's own
topics), decodes each record once (JSON or Avro, per topic), applies the
matching rules of :mod:`apex.triggers`, and sends their ``StartRun`` and
``SendSignal`` commands to ``apex.commands`` keyed by run id.

Delivery: one transactional producer per instance. Each batch of records is
one Kafka transaction holding its commands, its dead letters and the consumed
offsets (``send_offsets_to_transaction``), so the orchestrator (which reads
``read_committed``) sees a batch's commands if and only if its offsets moved.
Where that falls short — aiokafka carries no group generation with the
offsets (KIP-447, aiokafka #844), so an instance that lost its partitions in a
rebalance may still commit one batch the new owner also processes — delivery
is at least once, and that is harmless by construction: a command's id is
derived from (rule, topic, partition, offset) and its run id from the business
key, and the decider ignores a ``StartRun`` with an idempotency key it has seen
and a ``SendSignal`` whose command id it has accepted.

The transactional id is ``<group>-<APEX_INSTANCE_ID or host-pid>``: give each
replica a stable ``APEX_INSTANCE_ID`` so that a restarted instance fences its
predecessor and aborts its open transaction at once; with the default a
crashed instance's open transaction holds back ``read_committed`` readers of
the partitions it wrote until the broker times it out (60 s).

A new group starts at ``APEX_TRIGGERS_START`` (``latest`` by default: deploying
a rules file does not start a run for every business event of the past) and
commits that position as soon as it owns a partition, so that a restart before
the first event misses nothing.

Bad input never stops the service and is never lost: a record that is not an
event in its topic's format, a rule that cannot take a required value from the
event, or a command that cannot be encoded goes to ``apex.dlq`` with the reason
(inside the same transaction) and processing goes on. A tombstone (a record
without a value, as compacted topics have) holds no event and is skipped. A failed transaction
stops the service loudly; its offsets did not move, so a restart retries it.

Telemetry (when set up): each business event is handled in a ``process <topic>``
span, child of the trace context the upstream record carries (if any), and the
commands it yields carry that span's context: a triggered run's trace starts at
the upstream system's publish. With tracing off the upstream context is passed
on unchanged. Metrics count commands by rule, dead letters by stage, and lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, KafkaError
from opentelemetry.trace import Span

from apex import codec
from apex.clock import now_ms
from apex.config import Settings
from apex.kafka.clients import make_consumer, make_producer
from apex.kafka.dlq import dead_letter
from apex.kafka.topology import ensure_topics
from apex.telemetry import flags, metrics, tracing
from apex.telemetry.propagation import Headers, trace_headers
from apex.triggers import (
    DecodeError,
    ExtractionError,
    Rule,
    RuleSet,
    command_id_for,
    match,
)

log = logging.getLogger("apex.triggers")

_Out = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]
"""One record to produce: topic, key, value, headers."""

RULE_HEADER = "apex.trigger.rule"
SOURCE_HEADER = "apex.trigger.source"
"""``topic/partition/offset`` of the business event a command was made from."""

_BATCH = 500
_TOPIC_POLL_S = 2.0
_STARTS = ("latest", "earliest")


class TransactionFailed(RuntimeError):
    """A Kafka transaction of the trigger service failed; the process must stop."""


@dataclass
class TriggerStats:
    records: int = 0
    commands: int = 0
    unmatched: int = 0
    """Records no rule's filters selected."""
    dead_letters: int = 0
    tombstones: int = 0
    """Records without a value: skipped, there is no event in them."""
    transactions: int = 0


class TriggerService:
    """``await TriggerService(settings, rules).run()`` until :meth:`stop`."""

    def __init__(self, settings: Settings, rules: RuleSet) -> None:
        if settings.triggers_start not in _STARTS:
            raise ValueError(
                f"APEX_TRIGGERS_START={settings.triggers_start!r}: expected one of {_STARTS}"
            )
        if not rules.rules:
            raise ValueError(f"{rules.source}: no trigger rules to run")
        self.settings = settings
        self.rules = rules
        self.group = f"{settings.topic_prefix}triggers"
        self.instance = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.stats = TriggerStats()
        self._commands_topic = settings.topic("commands")
        self._by_topic: dict[str, list[Rule]] = {t: rules.for_topic(t) for t in rules.topics}
        self._lock = asyncio.Lock()
        self._pinned: set[TopicPartition] = set()
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Apply the rules until :meth:`stop`; raises :class:`TransactionFailed`."""
        await ensure_topics(self.settings)
        if not await self._wait_for_upstream_topics():
            return
        producer = make_producer(self.settings, transactional_id=f"{self.group}-{self.instance}")
        await producer.start()  # init_transactions: fences an earlier run of this instance
        consumer = make_consumer(
            self.settings,
            group_id=self.group,
            client_id=f"{self.group}-{self.instance}",
            auto_offset_reset=self.settings.triggers_start,
        )
        try:
            consumer.subscribe(self.rules.topics, listener=_Rebalance(self))
            await consumer.start()
            metrics.watch_consumer(consumer, self.group)
            log.info(
                "triggers %s started: %d rules on %s (group %s)",
                self.instance,
                len(self.rules.rules),
                ", ".join(self.rules.topics),
                self.group,
            )
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=_BATCH)
                async with self._lock:  # a revocation waits for this batch's transaction
                    owned = consumer.assignment()
                    batch = {tp: recs for tp, recs in batch.items() if recs and tp in owned}
                    await self._pin_new_partitions(consumer, owned, batch)
                    if batch:
                        await self._process(producer, batch)
        finally:
            metrics.unwatch_consumer(consumer)
            await consumer.stop()
            await producer.stop()

    def stop(self) -> None:
        self._stopping.set()

    async def _wait_for_upstream_topics(self) -> bool:
        """True once every upstream topic exists; False when stopped first.

        The upstream systems own their topics: the service never creates them,
        and aiokafka's consumer would wait for a missing one without end (and
        log an error every 100 ms), so it waits here, saying so once.
        """
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        await admin.start()
        try:
            warned = False
            while not self._stopping.is_set():
                missing = sorted(set(self.rules.topics) - set(await admin.list_topics()))
                if not missing:
                    return True
                if not warned:
                    log.warning(
                        "waiting for upstream topics %s to exist (the rules read them; "
                        "the systems that publish on them create them)",
                        ", ".join(missing),
                    )
                    warned = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), _TOPIC_POLL_S)
            return False
        finally:
            await admin.close()

    # -- one batch, one transaction --------------------------------------------------------

    async def _process(
        self, producer: AIOKafkaProducer, batch: dict[TopicPartition, list[Any]]
    ) -> None:
        outs = [
            out for records in batch.values() for record in records for out in self._handle(record)
        ]
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        try:
            await producer.begin_transaction()
            sends = [
                await producer.send(topic, value=value, key=key, headers=headers)
                for topic, key, value, headers in outs
            ]
            await asyncio.gather(*sends)
            await producer.send_offsets_to_transaction(offsets, self.group)
            await producer.commit_transaction()
        except Exception as exc:
            where = ", ".join(f"{tp.topic}[{tp.partition}]@{o - 1}" for tp, o in offsets.items())
            log.critical("trigger transaction up to %s failed, stopping: %r", where, exc)
            raise TransactionFailed(
                f"trigger transaction up to {where} failed: {exc!r}; its offsets did not move, "
                "so a restart processes those records again"
            ) from exc
        self.stats.transactions += 1

    def _handle(self, record: Any) -> list[_Out]:
        """The records one business event yields: commands, dead letters, or nothing."""
        self.stats.records += 1
        if record.value is None:  # a tombstone (compacted topic) carries no event
            self.stats.tombstones += 1
            return []
        if not flags.TRACING:
            return self._decide(record, trace_headers(record.headers), None)
        with tracing.consumer_span(record, group=self.group) as span:
            return self._decide(record, None, span)

    def _decide(self, record: Any, trace: Headers | None, span: Span | None) -> list[_Out]:
        """The commands (or dead letters) of one record; ``trace`` or ``span``'s context on them."""
        try:
            event = self.rules.decoders[record.topic].decode(record.value)
        except DecodeError as exc:
            if span is not None:
                tracing.record_error(span, exc)
            return [self._dead_letter(record, "triggers.decode", exc)]
        if span is not None:
            trace = tracing.headers_of(span)
        source = f"{record.topic}/{record.partition}/{record.offset}".encode()
        now = now_ms()
        outs: list[_Out] = []
        for rule in self._by_topic.get(record.topic, ()):
            command_id = command_id_for(rule, record.topic, record.partition, record.offset)
            try:
                commands = match(rule, event, command_id=command_id, issued_at_ms=now)
                encoded = [(c.run_id.encode(), codec.encode_command(c)) for c in commands]
            except (ExtractionError, codec.CodecError) as exc:
                outs.append(self._dead_letter(record, f"triggers.rule.{rule.name}", exc))
                continue
            headers = [*(trace or ()), (RULE_HEADER, rule.name.encode()), (SOURCE_HEADER, source)]
            outs.extend((self._commands_topic, key, value, headers) for key, value in encoded)
            self.stats.commands += len(encoded)
            if flags.METRICS and encoded:
                metrics.get().trigger_commands.add(len(encoded), {"rule": rule.name})
        if not outs:
            self.stats.unmatched += 1
        if span is not None:
            span.set_attribute("apex.records", len(outs))
        return outs

    def _dead_letter(self, record: Any, stage: str, error: Exception) -> _Out:
        log.warning(
            "record %s[%d]@%d to the DLQ (%s): %s",
            record.topic,
            record.partition,
            record.offset,
            stage,
            error,
        )
        self.stats.dead_letters += 1
        if flags.METRICS:
            metrics.get().dlq.add(1, {"stage": stage})
        letter = dead_letter(self.settings, record, stage, error)
        return letter.topic, letter.key, letter.value, letter.headers

    # -- partition ownership ------------------------------------------------------------------

    async def _pin_new_partitions(
        self,
        consumer: AIOKafkaConsumer,
        owned: set[TopicPartition],
        batch: dict[TopicPartition, list[Any]],
    ) -> None:
        """Commit the start position of newly owned partitions that have no committed offset.

        Without it, ``latest`` would be looked up again after a restart and the
        events published in between would never trigger anything. A partition
        with records in this batch gets its offset from the batch's transaction.
        """
        for tp in owned - self._pinned:
            try:
                if tp not in batch and await consumer.committed(tp) is None:
                    await consumer.commit({tp: await consumer.position(tp)})
            except (CommitFailedError, KafkaError) as exc:  # e.g. a rebalance: next time
                log.info("cannot pin the start of %s[%d] yet: %r", tp.topic, tp.partition, exc)
                continue
            self._pinned.add(tp)

    async def _release(self, tps: Sequence[TopicPartition]) -> None:
        async with self._lock:  # waits for an in-flight batch of these partitions to commit
            self._pinned.difference_update(tps)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: TriggerService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._service._release(list(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        log.info("triggers: %d upstream partitions assigned", len(assigned))
