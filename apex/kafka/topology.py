"""Apex's topics and their configs, created idempotently on start.

``apex.commands``, ``apex.events`` and ``apex.tasks.*`` are keyed by run id and
must have the same partition count: the orchestrator that owns commands
partition *p* rebuilds its runs from events partition *p*.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError, TopicAlreadyExistsError

from apex.config import Settings

_READY_WITHIN_S = 15.0
_CAPABILITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


class TopologyError(RuntimeError):
    """The cluster's topics cannot serve Apex as configured."""


async def wait_for_leaders(admin: AIOKafkaAdminClient, name: str, within: float) -> None:
    """Wait until topic ``name`` is in the metadata and each partition has a leader."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        [topic] = await admin.describe_topics([name])
        partitions = topic.get("partitions") or []
        if topic["error_code"] == 0 and partitions and all(p["leader"] >= 0 for p in partitions):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise KafkaTimeoutError(
                f"topic {name!r} has no leader for every partition after {within:.0f} s: {topic}"
            )
        await asyncio.sleep(0.05)


def task_topic(settings: Settings, capability: str) -> str:
    if not _CAPABILITY.match(capability):
        raise ValueError(
            f"capability {capability!r} cannot name a topic: use letters, digits, '.', '_', '-'"
        )
    return settings.topic(f"tasks.{capability}")


def topic_specs(settings: Settings, capabilities: Iterable[str] = ()) -> list[TopicSpec]:
    n = settings.partitions
    durable = {"min.insync.replicas": str(min(2, settings.replication_factor))}
    specs = [
        TopicSpec(settings.topic("commands"), n, dict(durable)),
        # The log of truth: never expires, never compacts.
        TopicSpec(
            settings.topic("events"),
            n,
            {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete", **durable},
        ),
        TopicSpec(settings.topic("results"), n, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
        TopicSpec(settings.topic("definitions"), 1, {"cleanup.policy": "compact", **durable}),
        TopicSpec(settings.topic("dlq"), 1, {"retention.ms": "-1"}),
    ]
    specs.extend(TopicSpec(task_topic(settings, c), n) for c in sorted(set(capabilities)))
    return specs


async def ensure_topics(settings: Settings, capabilities: Iterable[str] = ()) -> list[str]:
    """Create the missing topics; check the keyed ones agree on partitions.

    Returns the names created. Raises :class:`TopologyError` when existing
    topics have partition counts that would split a run across owners.
    """
    specs = topic_specs(settings, capabilities)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            new = [
                NewTopic(s.name, s.partitions, settings.replication_factor, topic_configs=s.configs)
                for s in missing
            ]
            response = await admin.create_topics(new)
            for topic_error in getattr(response, "topic_errors", ()):
                name, code = topic_error[0], topic_error[1]
                # Another process may have created it first: that is fine.
                if code not in (0, TopicAlreadyExistsError.errno):
                    message = topic_error[2] if len(topic_error) > 2 else ""
                    raise TopologyError(f"cannot create topic {name}: error {code} {message}")
            # KRaft's controller answers before the brokers know the topics: a
            # client that asked for them right away would find no partitions.
            for spec in missing:
                await wait_for_leaders(admin, spec.name, _READY_WITHIN_S)
        keyed = [settings.topic("commands"), settings.topic("events")]
        described = await admin.describe_topics(keyed)
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        if len(set(counts.values())) > 1:
            raise TopologyError(
                f"{keyed[0]} and {keyed[1]} must have the same partition count, got {counts}: "
                "a run's commands and events would land on different partitions"
            )
        return [s.name for s in missing]
    finally:
        await admin.close()
