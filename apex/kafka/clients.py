"""Producer and consumer factories with Apex's delivery settings.

Producers are idempotent with ``acks=all``; consumers read committed records
only and never auto-commit (offsets move with transactions or explicit commits).
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from apex.config import Settings


def make_producer(
    settings: Settings, *, transactional_id: str | None = None, **overrides: Any
) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": settings.linger_ms,
        "max_batch_size": 256 * 1024,
    }
    if transactional_id is not None:
        options["transactional_id"] = transactional_id
        options["transaction_timeout_ms"] = 60_000
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None = None, **overrides: Any
) -> AIOKafkaConsumer:
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
    return AIOKafkaConsumer(*topics, **options)


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
