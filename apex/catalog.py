"""The workflow definitions registered on the compacted ``apex.definitions`` topic.

Readers keep the whole topic in memory (definitions are few and small) and read
it to its end again when asked for a definition they do not know yet, so a
``StartRun`` sent right after ``register`` finds its definition.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from apex.config import Settings
from apex.domain.definitions import WorkflowDefinition
from apex.kafka.clients import make_consumer, topic_partitions

log = logging.getLogger(__name__)


class DefinitionCatalog:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = settings.topic("definitions")
        self._by_key: dict[tuple[str, int], WorkflowDefinition] = {}
        self._latest: dict[str, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._reading = asyncio.Lock()  # one reader of the consumer at a time

    async def start(self) -> None:
        self._consumer = make_consumer(self._settings)
        await self._consumer.start()
        self._partitions = await topic_partitions(self._consumer, self._topic)
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)
        await self.refresh()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def refresh(self) -> None:
        """Read the topic up to its current end."""
        async with self._reading:
            await self._read_to_end()

    async def _read_to_end(self) -> None:
        """Read from where the last read stopped to the end as of now.

        Between reads the partitions are paused: an assigned consumer fetches on
        its own, and this one cost the broker and its process a long poll every
        ``fetch_max_wait_ms`` for records nobody reads until the next read.
        """
        consumer = self._consumer
        assert consumer is not None, "DefinitionCatalog.start() first"
        consumer.resume(*self._partitions)
        try:
            await self._read_until(consumer, await consumer.end_offsets(self._partitions))
        finally:
            consumer.pause(*self._partitions)

    async def _read_until(self, consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> None:
        from apex import codec

        while await self._behind(end):
            batch = await consumer.getmany(*self._partitions, timeout_ms=200)
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        definition = codec.decode_definition(record.value)
                    except codec.CodecError as exc:
                        log.error(
                            "skipping undecodable definition at %s[%d]@%d: %s",
                            record.topic,
                            record.partition,
                            record.offset,
                            exc,
                        )
                        continue
                    self.add(definition)

    async def _behind(self, end: dict[TopicPartition, int]) -> bool:
        assert self._consumer is not None
        for tp in self._partitions:
            if await self._consumer.position(tp) < end[tp]:
                return True
        return False

    def add(self, definition: WorkflowDefinition) -> None:
        self._by_key[(definition.name, definition.version)] = definition
        if definition.version >= self._latest.get(definition.name, 0):
            self._latest[definition.name] = definition.version

    def get(self, name: str, version: int | None = None) -> WorkflowDefinition | None:
        if version is None:
            version = self._latest.get(name)
            if version is None:
                return None
        return self._by_key.get((name, version))

    async def resolve(self, name: str, version: int | None = None) -> WorkflowDefinition | None:
        found = self.get(name, version)
        if found is None:
            await self.refresh()
            found = self.get(name, version)
        return found

    def all(self) -> list[WorkflowDefinition]:
        return sorted(self._by_key.values(), key=lambda d: (d.name, d.version))

    def capabilities(self) -> set[str]:
        return {step.capability for d in self._by_key.values() for step in d.steps}
