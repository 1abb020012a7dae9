"""The Python client: publish commands, definitions and business events; read runs and results.

    async with ApexClient(Settings.from_env()) as client:
        await client.register(definition)
        run_id = await client.start_run("triage", {"text": "..."}, idempotency_key="T-42")
        result = (await client.wait([run_id]))[run_id]
        run = await client.get_run(run_id)                  # from the read models
        async for r in client.subscribe(definition="triage", status="failed"):
            ...

Every write is a record on a topic; nothing here talks to the orchestrator
directly, and a method that returns has had its record acknowledged by Kafka
(``acks=all``), not yet *decided*: the orchestrator may still refuse it (a
``CommandRejected`` in the run's log). Time, ids and jitter seeds are chosen
here — at the edge — so the decider stays pure.

Three sources, three freshnesses:

* ``get_run``, ``list_runs``, ``pending_approvals`` read the PostgreSQL read
  models (:mod:`apex.queries`), which trail the log by the projection lag;
* ``subscribe``, ``results`` and ``wait`` read ``apex.results`` from Kafka
  (:mod:`apex.subscription`), each call an independent reader;
* ``definitions`` and ``get_definition`` read the compacted ``apex.definitions``.

Kafka clients start with ``start()`` (or ``async with``); the read-model engine
and the definitions reader are made on first use and closed by ``stop()``.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from apex import codec
from apex.catalog import DefinitionCatalog
from apex.clock import now_ms
from apex.config import Settings
from apex.domain import commands as cmd
from apex.domain.definitions import WorkflowDefinition
from apex.domain.messages import RunResult, StepResult
from apex.domain.validation import ensure_valid
from apex.kafka.clients import RecordTooLarge, make_producer, oversize
from apex.kafka.topology import ensure_topics
from apex.queries import PendingApproval, ReadModels, RunInfo, RunPage
from apex.subscription import Result, ResultKind, Subscription
from apex.telemetry import tracing

__all__ = [
    "ApexClient",
    "Published",
    "TopicNotFound",
    "now_ms",
    "run_id_for",
]

_RUN_NAMESPACE = uuid.UUID("6f1c2d1e-7a4b-4c55-9a0e-1f3a5b7c9d10")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def run_id_for(definition_name: str, idempotency_key: str) -> str:
    """The run id an idempotency key maps to: the same key always lands on one run."""
    return str(uuid.uuid5(_RUN_NAMESPACE, f"{definition_name}\x00{idempotency_key}"))


class TopicNotFound(LookupError):
    """``publish`` to a topic the cluster does not have (Apex never creates upstream topics)."""


@dataclass(frozen=True, slots=True)
class Published:
    """Where a published business event landed."""

    topic: str
    partition: int
    offset: int


class ApexClient:
    """Async client. ``async with ApexClient(settings) as client: ...``

    ``engine`` is the SQLAlchemy async engine of the read models (default: one
    made from ``settings.sqlalchemy_url`` on first use and disposed by ``stop``).
    """

    def __init__(
        self, settings: Settings | None = None, *, engine: AsyncEngine | None = None
    ) -> None:
        self.settings = settings or Settings.from_env()
        self._producer: AIOKafkaProducer | None = None
        self._engine = engine
        self._own_engine = engine is None
        self._read_models: ReadModels | None = None
        self._catalog: DefinitionCatalog | None = None

    async def __aenter__(self) -> ApexClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Create Apex's topics if missing and connect the producer."""
        await ensure_topics(self.settings)
        self._producer = make_producer(self.settings)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._catalog is not None:
            await self._catalog.stop()
            self._catalog = None
        if self._engine is not None and self._own_engine:
            await self._engine.dispose()
            self._engine = None
        self._read_models = None

    # -- definitions -----------------------------------------------------------------------

    async def register(self, definition: WorkflowDefinition) -> str:
        """Validate and publish a definition; returns its key ``name@version``.

        Raises :class:`~apex.domain.errors.DefinitionError` listing every problem.
        """
        ensure_valid(definition)
        await ensure_topics(self.settings, (s.capability for s in definition.steps))
        await self._send(
            self.settings.topic("definitions"),
            definition.key,
            codec.encode_definition(definition),
        )
        if self._catalog is not None:
            self._catalog.add(definition)
        return definition.key

    async def definitions(self) -> list[WorkflowDefinition]:
        """Every registered version of every definition, by name then version."""
        catalog = await self._definitions()
        await catalog.refresh()
        return catalog.all()

    async def get_definition(
        self, name: str, version: int | None = None
    ) -> WorkflowDefinition | None:
        """One definition (the latest version when ``version`` is ``None``); ``None`` if unknown."""
        return await (await self._definitions()).resolve(name, version)

    # -- commands ----------------------------------------------------------------------------

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
    ) -> str:
        """Grant the approval a step waits for; returns the command id."""
        return await self.send(
            cmd.ApproveStep(
                **self._envelope(run_id), step_id=step_id, approver=approver, comment=comment
            )
        )

    async def reject(self, run_id: str, step_id: str, approver: str = "", reason: str = "") -> str:
        """Refuse the approval a step waits for (the step fails, with ``reason``)."""
        return await self.send(
            cmd.RejectStep(
                **self._envelope(run_id), step_id=step_id, approver=approver, reason=reason
            )
        )

    async def signal(
        self, run_id: str, name: str, payload: Any = None, correlation_key: str | None = None
    ) -> str:
        """Send the named signal to a run (a step waiting for it is dispatched)."""
        return await self.send(
            cmd.SendSignal(
                **self._envelope(run_id),
                name=name,
                payload=payload,
                correlation_key=correlation_key,
            )
        )

    async def cancel(self, run_id: str, reason: str = "") -> str:
        """Cancel a run: running steps are abandoned, nothing new is dispatched."""
        return await self.send(cmd.CancelRun(**self._envelope(run_id), reason=reason))

    async def send(self, command: cmd.Command) -> str:
        """Publish any command, keyed by its run id; returns its command id.

        The command id is the ``causation_id`` of the events it causes, and of
        the ``CommandRejected`` if the orchestrator refuses it.
        """
        topic = self.settings.topic("commands")
        value, key = codec.encode_command(command), command.run_id.encode()
        attributes = {tracing.RUN_ID: command.run_id, tracing.COMMAND_TYPE: type(command).__name__}
        # With tracing on, the run's trace starts here (or inside the caller's span).
        with tracing.producer_span(topic, key=command.run_id, attributes=attributes) as headers:
            limit = self.settings.max_record_bytes
            if (size := oversize(key, value, headers, limit)) is not None:
                raise RecordTooLarge(
                    f"{type(command).__name__} for run {command.run_id!r} is a {size:,}-byte "
                    f"record, over the {limit:,}-byte limit (APEX_MAX_RECORD_BYTES): not sent"
                )
            await self._started().send_and_wait(topic, value=value, key=key, headers=headers)
        return command.command_id

    # -- business events ------------------------------------------------------------------------

    async def publish(self, topic: str, event: Any, key: str | bytes | None = None) -> Published:
        """Publish a business event on an upstream topic, for trigger rules to read.

        ``topic`` is named as is (no Apex prefix) and must exist. ``event`` is
        a JSON value (written as UTF-8 JSON) or ``bytes`` written unchanged
        (e.g. Avro for an ``format: avro`` rule). Apex's own topics are refused:
        commands have their own methods, and only the orchestrator writes events.
        """
        if topic.startswith(self.settings.topic_prefix):
            raise ValueError(
                f"{topic!r} is one of Apex's own topics (prefix {self.settings.topic_prefix!r}): "
                "publish() is for upstream business-event topics; use start_run, signal, "
                "approve or cancel for commands"
            )
        if isinstance(event, bytes | bytearray | memoryview):
            value = bytes(event)
        else:
            try:
                value = json.dumps(event, ensure_ascii=False, allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise ValueError(f"the event is not a JSON value: {exc}") from None
        await self._require_topic(topic)
        raw_key = key.encode() if isinstance(key, str) else key
        with tracing.producer_span(topic, key=raw_key) as headers:
            metadata = await self._started().send_and_wait(
                topic, value=value, key=raw_key, headers=headers
            )
        return Published(topic, metadata.partition, metadata.offset)

    # -- read models ------------------------------------------------------------------------------

    @property
    def read_models(self) -> ReadModels:
        """Queries over the PostgreSQL read models (schema ``settings.read_model_schema``)."""
        if self._read_models is None:
            if self._engine is None:
                self._engine = create_async_engine(self.settings.sqlalchemy_url)
                self._own_engine = True
            self._read_models = ReadModels(self._engine, self.settings.read_model_schema)
        return self._read_models

    async def get_run(self, run_id: str) -> RunInfo | None:
        """The run with its steps and approvals, as projected; ``None`` if not (yet) there."""
        return await self.read_models.get_run(run_id)

    async def list_runs(
        self,
        *,
        definition: str | None = None,
        status: str | Iterable[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """A page of runs, newest first; pass ``page.next_cursor`` back for the next one.

        ``definition`` is a name or ``name@version``; ``status`` one of running,
        completed, failed, cancelled (or several); ``since``/``until`` bound the
        start time.
        """
        return await self.read_models.list_runs(
            definition=definition,
            status=status,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )

    async def pending_approvals(
        self, *, definition: str | None = None, limit: int = 100
    ) -> list[PendingApproval]:
        """The approvals inbox: steps waiting for a human, the soonest deadline first."""
        return await self.read_models.pending_approvals(definition=definition, limit=limit)

    # -- results -----------------------------------------------------------------------------------

    def subscribe(
        self,
        *,
        definition: str | None = None,
        run_id: str | None = None,
        status: str | Iterable[str] | None = None,
        kind: ResultKind = "any",
        from_time: datetime | None = None,
        where: Callable[[Result], bool] | None = None,
        idle_timeout_s: float | None = None,
        limit: int | None = None,
    ) -> Subscription:
        """Results as an async iterator, each call an independent reader (no consumer group).

        ``from_time=None`` reads from *now* (fixed when the subscription
        starts: ``async with`` or the first ``async for`` step); a timezone-aware
        ``datetime`` reads from the first result published at or after it.
        See :class:`~apex.subscription.Subscription` for the filters.
        """
        return Subscription(
            self.settings,
            definition=definition,
            run_id=run_id,
            status=status,
            kind=kind,
            from_time=from_time,
            where=where,
            idle_timeout_s=idle_timeout_s,
            limit=limit,
        )

    async def results(
        self, *, from_beginning: bool = False, idle_timeout_s: float | None = None
    ) -> AsyncIterator[RunResult | StepResult]:
        """Every result as it is published (or from the beginning); an independent reader."""
        subscription = self.subscribe(
            from_time=_EPOCH if from_beginning else None, idle_timeout_s=idle_timeout_s
        )
        async with subscription:
            async for result in subscription:
                yield result

    async def wait(self, run_ids: Iterable[str], timeout_s: float = 60.0) -> dict[str, RunResult]:
        """Wait for the runs' results (read from the start of ``apex.results``)."""
        wanted = set(run_ids)
        found: dict[str, RunResult] = {}
        if not wanted:
            return found

        async def collect() -> None:
            async with self.subscribe(
                kind="run", from_time=_EPOCH, where=lambda r: r.run_id in wanted
            ) as results:
                async for result in results:
                    assert isinstance(result, RunResult)
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

    # -- helpers ---------------------------------------------------------------------------------

    def _envelope(self, run_id: str) -> dict[str, Any]:
        return {"command_id": str(uuid.uuid4()), "run_id": run_id, "issued_at_ms": now_ms()}

    def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("ApexClient is not started: use 'async with ApexClient(...)'")
        return self._producer

    async def _send(self, topic: str, key: str, value: bytes) -> None:
        await self._started().send_and_wait(topic, value=value, key=key.encode())

    async def _require_topic(self, topic: str) -> None:
        client = self._started().client
        if client.cluster.partitions_for_topic(topic) is None:
            client.add_topic(topic)
            await client.force_metadata_update()
            if client.cluster.partitions_for_topic(topic) is None:
                client._topics.discard(topic)  # or every metadata refresh would ask for it
                raise TopicNotFound(
                    f"topic {topic!r} does not exist on {self.settings.kafka_bootstrap}: "
                    "upstream topics are created by their owners, not by Apex"
                )

    async def _definitions(self) -> DefinitionCatalog:
        if self._catalog is None:
            catalog = DefinitionCatalog(self.settings)
            await catalog.start()
            self._catalog = catalog
        return self._catalog
