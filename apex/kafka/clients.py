"""Producer and consumer factories with Apex's delivery settings.

Producers are idempotent with ``acks=all``; consumers read committed records
only and never auto-commit (offsets move with transactions or explicit commits).

What aiokafka does on every record or transaction that Apex pays for a great deal:

- its partitioner hashes the key with a pure-Python murmur2 (13-16 % of the
  orchestrator's CPU): :func:`key_hash` keeps the hash of recent keys — a run
  id is the key of every record of its run — and gives the same partitions as
  Kafka's Java clients;
- it rebuilds the topic's partition set (twice, as sets and lists) to place
  every record: :class:`_Producer` places a keyed record from the partition
  count alone (3.9 -> 0.4 µs a record; ~4 % of the orchestrator's CPU per step);
- after a transaction, the next one's first request often meets
  CONCURRENT_TRANSACTIONS while the broker still writes the last one's markers,
  and aiokafka retries it after a fixed 20 ms (``BACKOFF_OVERRIDE``,
  KAFKA-5477). Back-to-back transactions are the orchestrator's normal case, so
  :func:`make_producer` sets it to ``APEX_KAFKA_TXN_RETRY_MS`` (a process-wide
  aiokafka constant; measured: step-to-step p99 at one run 41 -> 25 ms);
- it speaks Kafka's first transaction protocol, one AddPartitionsToTxn round
  trip before a transaction's records: a transactional producer made here
  switches to the second (KIP-890, :mod:`apex.kafka.txn_v2`) when the broker
  has it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Iterable
from typing import Any

import aiokafka.producer.sender as _sender
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from apex.config import Settings
from apex.kafka.txn_v2 import use_transaction_v2

log = logging.getLogger(__name__)

TXN_PROTOCOLS = ("auto", "v1")
"""``APEX_KAFKA_TXN_PROTOCOL``: auto uses v2 (KIP-890) where the broker has it."""


@functools.lru_cache(maxsize=65_536)
def key_hash(key: bytes) -> int:
    """Kafka's default partitioner hash of ``key`` (murmur2, positive), as Java's."""
    hashed: int = murmur2(key)
    return hashed & 0x7FFFFFFF


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner puts ``key`` in, of ``partitions``."""
    return key_hash(key) % partitions


def _partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's ``DefaultPartitioner`` with :func:`key_hash`'s memory."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[key_hash(key) % len(all_partitions)]


class _Producer(AIOKafkaProducer):  # type: ignore[misc]
    """aiokafka's producer, placing a keyed record without rebuilding the topic's partitions.

    ``send`` first asks the client for the topic's partitions, which builds a
    set of them per record (~5 % of the orchestrator's CPU at 1,000 runs); for a
    known topic the client's own table answers, as a set-like view.
    """

    def __init__(self, *, txn_protocol: str = "v1", **options: Any) -> None:
        if txn_protocol not in TXN_PROTOCOLS:
            raise ValueError(
                f"APEX_KAFKA_TXN_PROTOCOL={txn_protocol!r}: use one of {', '.join(TXN_PROTOCOLS)}"
            )
        super().__init__(**options)
        self.txn_protocol = txn_protocol
        client = self.client
        wait_on_metadata = client._wait_on_metadata

        async def known_or_wait(topic: str) -> Any:
            partitions = client.cluster._partitions.get(topic)
            if partitions is not None:
                return partitions.keys()
            return await wait_on_metadata(topic)

        client._wait_on_metadata = known_or_wait

    async def start(self) -> None:
        """Start; a transactional producer then speaks transaction protocol v2 when it
        may (``APEX_KAFKA_TXN_PROTOCOL=auto`` and a broker that finalised it)."""
        await super().start()
        txn = self._txn_manager
        if self.txn_protocol == "auto" and txn is not None and txn.transactional_id is not None:
            try:
                self.txn_protocol = "v2" if await use_transaction_v2(self) else "v1"
            except KafkaError as exc:  # v1 works with any broker: slower, not wrong
                log.warning("could not ask the broker for transaction protocol v2 (%r): v1", exc)
                self.txn_protocol = "v1"
            except BaseException:
                await self.stop()  # its sender runs since super().start()
                raise

    def _partition(
        self,
        topic: str,
        partition: int | None,
        key: Any,
        value: Any,
        serialized_key: bytes | None,
        serialized_value: bytes | None,
    ) -> int:
        if partition is None and serialized_key is not None:
            # ``partitions_for_topic`` is ``set(_partitions[topic])``, built per call; Kafka's
            # default partitioner picks index hash % count of partitions 0..count-1.
            known = self._metadata._partitions.get(topic)
            if known:
                return key_hash(serialized_key) % len(known)
        placed: int = super()._partition(
            topic, partition, key, value, serialized_key, serialized_value
        )
        return placed


Record = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]
"""One record to produce: topic, key, value, headers."""


class RecordTooLarge(ValueError):
    """A record over ``APEX_MAX_RECORD_BYTES``: the broker would refuse it, and its transaction."""


def oversize(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None, limit: int
) -> int | None:
    """The bytes of a record over ``limit``, as Kafka counts them; ``None`` if it fits."""
    if len(value or b"") + _HEADROOM <= limit:
        return None
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers or [])
    return size if size > limit else None


_HEADROOM = 16 * 1024
"""A value this far under the limit fits with Apex's keys and headers: no need to count them."""


async def send_batched(producer: AIOKafkaProducer, records: Iterable[Record]) -> list[Any]:
    """Send ``records`` as one closed batch per partition; the batches' delivery futures.

    What ``send`` per record costs aiokafka — a future per record, resolved one
    by one with a metadata object each, and its callbacks (~20 % of the
    orchestrator's CPU at 1,000 runs) — is paid once per partition. A closed
    batch does not linger: all of a transaction's batches are queued before the
    producer's sender runs, so one Produce carries them (with transaction protocol
    v1, after one AddPartitionsToTxn for them all). Records keep their order per partition;
    a partition's batch that fills up (``max_batch_size``) goes first and a new
    one follows it.
    """
    builders: dict[TopicPartition, Any] = {}
    futures: list[Any] = []
    topics: set[str] = set()
    for topic, key, value, headers in records:
        if topic not in topics:  # a topic's metadata once per call, not per record
            await producer.client._wait_on_metadata(topic)
            topics.add(topic)
        tp = TopicPartition(topic, producer._partition(topic, None, key, value, key, value))
        builder = builders.get(tp)
        if builder is None:
            builder = builders[tp] = producer.create_batch()
        if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
            builder.close()  # full: it goes, and a new one takes this record on
            futures.append(await producer.send_batch(builder, tp.topic, partition=tp.partition))
            builder = builders[tp] = producer.create_batch()
            builder.append(timestamp=None, key=key, value=value, headers=headers)  # 1st fits
    for tp, builder in builders.items():
        builder.close()
        futures.append(await producer.send_batch(builder, tp.topic, partition=tp.partition))
    return futures


def make_producer(
    settings: Settings, *, transactional_id: str | None = None, **overrides: Any
) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": settings.linger_ms,
        "max_batch_size": 256 * 1024,
        "partitioner": _partitioner,
    }
    if transactional_id is not None:
        _sender.BACKOFF_OVERRIDE = settings.kafka_txn_retry_ms / 1000
        options["transactional_id"] = transactional_id
        options["transaction_timeout_ms"] = 60_000
        options["txn_protocol"] = settings.kafka_txn_protocol
    options.update(overrides)
    return _Producer(**options)


REFETCH_AFTER_S = 0.001
"""How long a consumer made with ``refetch_later=True`` waits, once its records
are taken, before asking the broker for more (see :class:`_RefetchLater`)."""


class _RefetchLater(AIOKafkaConsumer):  # type: ignore[misc]
    """A consumer that asks for more records :data:`REFETCH_AFTER_S` after its
    records are taken, instead of at once.

    aiokafka sends no fetch to a broker while records it fetched from it wait to
    be taken; ``getmany`` taking them wakes its fetcher, which then builds and
    sends the next Fetch. That wake-up is queued before anything the caller then
    sends, so on the hop's path — the orchestrator takes a command and sends its
    transaction, the worker takes a dispatch and sends its report — the next
    Fetch went out first, and the Produce waited the fetcher's turns of the loop
    (chain5 c=1, hop timeline, p50s, the median of 4 rounds: 0.39 ms from the
    agent's return to the report's Produce, 0.62 ms from the command in hand to
    the transaction's). The deferred wake-up lets the Produce go first (0.16 and
    0.43 ms, 4 rounds interleaved with those). End to end, chain5 c=1,
    8 interleaved rounds: steps/s higher in 6 (medians 169 -> 177), hop p50 lower
    in 8 (4.22 -> 3.91 ms), p99 lower in 6 (11.5 -> 9.9 ms); at 1,000 runs in
    flight and fan10 c=100, 2 rounds each, no worse.

    The cost: records that reach the broker meanwhile, or wait there already,
    come up to :data:`REFETCH_AFTER_S` later; so does the fetch after a seek or an
    offset reset, which aiokafka signals with the same wake-up. No wake-up is
    lost: a fetch answered or an assignment still wakes the fetcher at once, and
    when it has started another round before the deferred wake-up comes, that
    round already saw the records taken (the wake-up then sets a future nobody
    waits for).
    """

    async def start(self) -> None:
        await super().start()
        fetcher = self._fetcher
        notify = fetcher._notify  # aiokafka's: sets the future unless it is done
        later = asyncio.get_running_loop().call_later

        def deferred(future: asyncio.Future[None] | None) -> None:
            if future is not None and future is fetcher._wait_consume_future:
                later(REFETCH_AFTER_S, notify, future)
            else:
                notify(future)

        fetcher._notify = deferred


def make_consumer(
    settings: Settings,
    *topics: str,
    group_id: str | None = None,
    refetch_later: bool = False,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A read-committed consumer that never auto-commits. ``refetch_later``: one
    on the hop's path, which sends what it took before fetching more
    (:class:`_RefetchLater`)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "group_id": group_id,
        "isolation_level": "read_committed",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": max(500, settings.session_timeout_ms // 4),
        "max_poll_interval_ms": 600_000,
    }
    options.update(overrides)
    return (_RefetchLater if refetch_later else AIOKafkaConsumer)(*topics, **options)


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The topic's partitions in order, or ``[]`` when it does not exist.

    A consumer that has not subscribed to the topic may not know it yet: its
    metadata is refreshed once before concluding the topic is not there.
    """
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(parts or ())]
