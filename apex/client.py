"""The Python client: publish commands and definitions, read results.

Every operation is a record on a topic; nothing here talks to the orchestrator
directly. Time, ids and jitter seeds are chosen here — at the edge — so the
decider stays pure.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from apex import codec
from apex.config import Settings
from apex.domain import commands as cmd
from apex.domain.definitions import WorkflowDefinition
from apex.domain.messages import RunResult, StepResult
from apex.domain.validation import ensure_valid
from apex.kafka.clients import make_consumer, make_producer
from apex.kafka.topology import ensure_topics

_RUN_NAMESPACE = uuid.UUID("6f1c2d1e-7a4b-4c55-9a0e-1f3a5b7c9d10")


def run_id_for(definition_name: str, idempotency_key: str) -> str:
    """The run id an idempotency key maps to: the same key always lands on one run."""
    return str(uuid.uuid5(_RUN_NAMESPACE, f"{definition_name}\x00{idempotency_key}"))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ApexClient:
    """Async client. ``async with ApexClient(settings) as client: ...``"""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> ApexClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await ensure_topics(self.settings)
        self._producer = make_producer(self.settings)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    # -- definitions -----------------------------------------------------------------

    async def register(self, definition: WorkflowDefinition) -> str:
        """Validate and publish a definition; returns its key ``name@version``."""
        ensure_valid(definition)
        await ensure_topics(self.settings, (s.capability for s in definition.steps))
        await self._send(
            self.settings.topic("definitions"),
            definition.key,
            codec.encode_definition(definition),
        )
        return definition.key

    # -- commands ----------------------------------------------------------------------

    async def start_run(
        self,
        definition: str,
        input: Any = None,
        *,
        version: int | None = None,
        idempotency_key: str = "",
        run_id: str | None = None,
        correlation_id: str = "",
    ) -> str:
        """Ask for a run; returns its id. With an idempotency key, asking twice starts one run."""
        if run_id is None:
            run_id = (
                run_id_for(definition, idempotency_key) if idempotency_key else str(uuid.uuid4())
            )
        await self.send(
            cmd.StartRun(
                command_id=str(uuid.uuid4()),
                run_id=run_id,
                issued_at_ms=now_ms(),
                correlation_id=correlation_id,
                definition_name=definition,
                definition_version=version,
                input={} if input is None else input,
                idempotency_key=idempotency_key,
                jitter_seed=random.getrandbits(63),
            )
        )
        return run_id

    async def approve(
        self, run_id: str, step_id: str, approver: str = "", comment: str = ""
    ) -> None:
        await self.send(
            cmd.ApproveStep(
                **self._envelope(run_id), step_id=step_id, approver=approver, comment=comment
            )
        )

    async def reject(self, run_id: str, step_id: str, approver: str = "", reason: str = "") -> None:
        await self.send(
            cmd.RejectStep(
                **self._envelope(run_id), step_id=step_id, approver=approver, reason=reason
            )
        )

    async def signal(
        self, run_id: str, name: str, payload: Any = None, correlation_key: str | None = None
    ) -> None:
        await self.send(
            cmd.SendSignal(
                **self._envelope(run_id),
                name=name,
                payload=payload,
                correlation_key=correlation_key,
            )
        )

    async def cancel(self, run_id: str, reason: str = "") -> None:
        await self.send(cmd.CancelRun(**self._envelope(run_id), reason=reason))

    async def send(self, command: cmd.Command) -> None:
        """Publish any command, keyed by its run id."""
        await self._send(
            self.settings.topic("commands"), command.run_id, codec.encode_command(command)
        )

    # -- results ------------------------------------------------------------------------

    async def results(
        self, *, from_beginning: bool = False, idle_timeout_s: float | None = None
    ) -> AsyncIterator[RunResult | StepResult]:
        """Results as they are published; each call is an independent subscriber."""
        topic = self.settings.topic("results")
        consumer = make_consumer(self.settings)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            if from_beginning:
                await consumer.seek_to_beginning(*tps)
            else:
                await consumer.seek_to_end(*tps)
            idle_since = time.monotonic()
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                if not batch and idle_timeout_s is not None:
                    if time.monotonic() - idle_since > idle_timeout_s:
                        return
                    continue
                idle_since = time.monotonic()
                for records in batch.values():
                    for record in records:
                        yield codec.decode_result(record.value)
        finally:
            await consumer.stop()

    async def wait(self, run_ids: Iterable[str], timeout_s: float = 60.0) -> dict[str, RunResult]:
        """Wait for the runs' results (read from the start of ``apex.results``)."""
        wanted = set(run_ids)
        found: dict[str, RunResult] = {}

        async def collect() -> None:
            async for result in self.results(from_beginning=True):
                if isinstance(result, RunResult) and result.run_id in wanted:
                    found[result.run_id] = result
                    if len(found) == len(wanted):
                        return

        try:
            await asyncio.wait_for(collect(), timeout_s)
        except TimeoutError:
            missing = sorted(wanted - set(found))
            raise TimeoutError(
                f"{len(missing)} of {len(wanted)} runs had no result after {timeout_s}s: "
                f"{missing[:5]}"
            ) from None
        return found

    # -- helpers ------------------------------------------------------------------------

    def _envelope(self, run_id: str) -> dict[str, Any]:
        return {"command_id": str(uuid.uuid4()), "run_id": run_id, "issued_at_ms": now_ms()}

    async def _send(self, topic: str, key: str, value: bytes) -> None:
        if self._producer is None:
            raise RuntimeError("ApexClient is not started: use 'async with ApexClient(...)'")
        await self._producer.send_and_wait(topic, value=value, key=key.encode())
