"""Small Kafka admin helpers for the dev stack, the smoke demo and the tests.

aiokafka's admin client returns raw protocol responses and does not raise on
per-topic error codes; these helpers check the codes and raise with the
broker's message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code

from apex.kafka.topology import wait_for_leaders

_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC = 3


async def create_topic(
    admin: AIOKafkaAdminClient,
    name: str,
    *,
    partitions: int = 1,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
    exist_ok: bool = False,
    ready_timeout: float = 15.0,
) -> None:
    """Create ``name`` with ``configs``; raise the broker's error if it refuses.

    Returns once every partition has a leader in the broker's metadata: in KRaft
    the controller answers CreateTopics before brokers have caught up, and a
    request sent in between (produce, describe configs) would say "unknown topic".
    """
    new = NewTopic(name, partitions, replication_factor, topic_configs=dict(configs or {}))
    response = await admin.create_topics([new])
    for entry in response.to_object()["topic_errors"]:
        code = entry["error_code"]
        if code == 0 or (exist_ok and code == _TOPIC_ALREADY_EXISTS):
            continue
        raise for_code(code)(f"create topic {entry['topic']!r}: {entry.get('error_message')}")
    await wait_for_leaders(admin, name, ready_timeout)


async def delete_topics(admin: AIOKafkaAdminClient, names: Iterable[str]) -> None:
    """Delete topics; topics already gone are not an error."""
    names = list(names)
    if not names:
        return
    response = await admin.delete_topics(names)
    for entry in response.to_object()["topic_error_codes"]:
        if entry["error_code"] not in (0, _UNKNOWN_TOPIC):
            raise for_code(entry["error_code"])(f"delete topic {entry['topic']!r}")


async def topic_configs(admin: AIOKafkaAdminClient, name: str) -> dict[str, str | None]:
    """Every config of topic ``name`` as the broker reports it (defaults included)."""
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    configs: dict[str, str | None] = {}
    for response in responses:
        resource: dict[str, Any]
        for resource in response.to_object()["resources"]:
            if resource["error_code"] != 0:
                raise for_code(resource["error_code"])(
                    f"describe configs of {name!r}: {resource['error_message']}"
                )
            for entry in resource["config_entries"]:
                configs[entry["config_names"]] = entry["config_value"]
    return configs
