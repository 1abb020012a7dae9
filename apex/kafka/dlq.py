"""The dead-letter queue: bad input is set aside with the reason, never lost.

The original key and bytes are kept as they were; headers say where the record
came from and why it could not be processed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apex.config import Settings
from apex.kafka.clients import oversize

REASON = "apex.dlq.reason"
ERROR_TYPE = "apex.dlq.error_type"
SOURCE_TOPIC = "apex.dlq.topic"
SOURCE_PARTITION = "apex.dlq.partition"
SOURCE_OFFSET = "apex.dlq.offset"
STAGE = "apex.dlq.stage"
VALUE_OMITTED = "apex.dlq.value_omitted"
"""Set (to the original's size) when the letter carries no value: it was over the limit."""


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def dead_letter(
    settings: Settings, record: Any, stage: str, error: BaseException | str
) -> DeadLetter:
    """The DLQ record for a consumed ``record`` that ``stage`` could not process."""
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    headers = list(record.headers or [])
    headers += [
        (REASON, reason[:4000].encode()),
        (ERROR_TYPE, (type(error).__name__ if not isinstance(error, str) else "invalid").encode()),
        (SOURCE_TOPIC, record.topic.encode()),
        (SOURCE_PARTITION, str(record.partition).encode()),
        (SOURCE_OFFSET, str(record.offset).encode()),
        (STAGE, stage.encode()),
    ]
    value = record.value
    if oversize(record.key, value, headers, settings.max_record_bytes) is not None:
        # Too large to set aside whole (the broker's limit is over Apex's): the
        # original stays where the headers say, and the letter says why it is empty.
        headers.append((VALUE_OMITTED, str(len(value or b"")).encode()))
        value = None
    return DeadLetter(settings.topic("dlq"), record.key, value, headers)


def header(headers: Any, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return bytes(value).decode()
    return None
