"""What flows: a run's events, the result stream (SSE) and business events in.

* ``GET /v1/runs/{run_id}/events`` — the run's history from ``apex.events``
  itself: located through the read models' event index when the run is
  indexed (a few seeks, whatever the log's size), otherwise by reading the
  run's partition (events are keyed by run id) from its last
  :data:`SCAN_LIMIT` records — for a run the projector has not reached yet.
* ``GET /v1/results`` — results as server-sent events, from now or from a point
  in time: ``event: run`` or ``event: step``, ``data:`` the result as JSON. A
  first comment line ``: subscribed`` says the stream's position is fixed
  (everything published after it is delivered). Each request is an
  independent reader; idle streams get a ``: ping`` every 15 s.
* ``POST /v1/topics/{topic}/events`` — a business event (any JSON) onto an
  upstream topic listed in ``APEX_GATEWAY_TOPICS``, for trigger rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from apex.audit.history import LoggedEvent, RunNotIndexed, event_fields, run_history
from apex.client import TopicNotFound
from apex.domain.messages import RunResult
from apex.gateway.app import Gateway, GatewayDep, Publisher, Reader
from apex.gateway.errors import ApiError, check_json, check_text, problem
from apex.gateway.models import COMMON_ERRORS, PublishedEvent, RunEvents, errors
from apex.gateway.models import LoggedEvent as EventOut
from apex.gateway.runs import RunId, utc
from apex.gateway.tenancy import owns, run_prefix
from apex.kafka.event_log import MissingOffsets
from apex.projections.rows import from_ms
from apex.subscription import Result, Subscription, partition_of

router = APIRouter(tags=["streams"], responses=COMMON_ERRORS)

SCAN_LIMIT = 200_000
"""Most records of a partition read to find a run that the event index does not have."""

ResultStatus = Literal["completed", "failed", "cancelled", "succeeded", "skipped"]


@router.get(
    "/v1/runs/{run_id}/events",
    responses=errors(e404="No events of this tenant's run in the log."),
)
async def run_events(run_id: RunId, gw: GatewayDep, key: Reader) -> RunEvents:
    """The run's events, in order, decoded from the log (not from the read models)."""
    if not owns(key.tenant, run_id):
        raise _no_events(run_id, key.tenant)
    check_text(run_id, "path.run_id")
    source: Literal["index", "scan"] = "index"
    async with gw.log_lock:
        try:
            history = await run_history(gw.settings, gw.engine, run_id, reader=gw.log)
            logged, complete = history.events, True
        except RunNotIndexed:
            logged, complete = await _scan(gw, run_id)
            source = "scan"
        except (MissingOffsets, TimeoutError) as exc:
            raise ApiError(
                503, "the run's events cannot be read from the log", [problem("server", str(exc))]
            ) from None
    if not logged:
        raise _no_events(run_id, key.tenant)
    return RunEvents(
        run_id=run_id,
        source=source,
        complete=complete,
        events=[_event_out(e) for e in logged],
    )


async def result_subscription(
    gw: GatewayDep,
    key: Reader,
    definition: Annotated[
        str | None, Query(max_length=200, description="A name, or name@version.")
    ] = None,
    run_id: Annotated[str | None, Query(max_length=300)] = None,
    status: Annotated[ResultStatus | None, Query()] = None,
    kind: Annotated[Literal["run", "step", "any"], Query()] = "any",
    since: Annotated[
        datetime | None, Query(description="From this time (ISO 8601); default: from now.")
    ] = None,
    limit: Annotated[int | None, Query(ge=1, description="Close after this many.")] = None,
    idle_timeout: Annotated[
        float | None,
        Query(gt=0, le=86400, description="Close after this many seconds without a result."),
    ] = None,
) -> Subscription:
    """The request's filters, checked before the stream begins (so errors are 4xx)."""
    for value, where in ((definition, "query.definition"), (run_id, "query.run_id")):
        if value is not None:
            check_text(value, where)
    prefix = run_prefix(key.tenant)
    if run_id is not None and not owns(key.tenant, run_id):
        raise ApiError(404, f"no run {run_id!r} of tenant {key.tenant!r}", [
            problem("query.run_id", f"this key's runs have ids starting {prefix!r}"),
        ])  # fmt: skip
    return gw.client.subscribe(
        definition=definition,
        run_id=run_id,
        status=status,
        kind=kind,
        from_time=utc(since, "query.since"),
        where=lambda r: r.run_id.startswith(prefix),
        limit=limit,
        idle_timeout_s=idle_timeout,
    )


@router.get(
    "/v1/results",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "`event: run` / `event: step`, `data:` the result as JSON.",
            "content": {"text/event-stream": {}},
        }
    },
)
async def results(
    subscription: Annotated[Subscription, Depends(result_subscription)],
) -> AsyncIterator[ServerSentEvent]:
    """Results of the tenant's runs as server-sent events, each request its own reader."""
    try:
        await subscription.start()
        yield ServerSentEvent(comment="subscribed")
        async for result in subscription:
            yield ServerSentEvent(event=_kind(result), data=_result_out(result))
    finally:
        await subscription.close()


@router.post(
    "/v1/topics/{topic}/events",
    status_code=202,
    responses=errors(
        e403="The topic is not open to the gateway (APEX_GATEWAY_TOPICS).",
        e404="The topic does not exist in Kafka.",
    ),
)
async def publish_event(
    topic: Annotated[str, Path(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")],
    gw: GatewayDep,
    key: Publisher,
    event: Annotated[Any, Body(description="The business event: any JSON value.")],
    partition_key: Annotated[
        str | None,
        Query(alias="key", max_length=500, description="The record key (e.g. a business id)."),
    ] = None,
) -> PublishedEvent:
    """Publish a business event on an upstream topic, for the trigger rules that read it."""
    allowed = gw.options.allowed_topics
    if topic not in allowed:
        raise ApiError(
            403,
            f"topic {topic!r} is not open to the gateway",
            [problem("path.topic", f"allowed: {', '.join(sorted(allowed)) or 'none'} "
                     "(APEX_GATEWAY_TOPICS)")],
        )  # fmt: skip
    check_json(event, "body")
    if partition_key is not None:
        check_text(partition_key, "query.key")
    try:
        published = await gw.client.publish(topic, event, key=partition_key)
    except TopicNotFound as exc:
        raise ApiError(
            404, f"topic {topic!r} does not exist", [problem("path.topic", str(exc))]
        ) from None
    return PublishedEvent(
        topic=published.topic, partition=published.partition, offset=published.offset
    )


# -- helpers ----------------------------------------------------------------------------------


async def _scan(gw: Gateway, run_id: str) -> tuple[list[LoggedEvent], bool]:
    """The run's events found by reading (the tail of) its partition of ``apex.events``."""
    topic = gw.settings.topic("events")
    partitions = await gw.log.partitions(topic)
    if not partitions:
        return [], True
    partition = partition_of(run_id, len(partitions))
    starts = await gw.log.beginning_offsets(topic)
    ends = await gw.log.end_offsets(topic)
    start = max(starts.get(partition, 0), ends.get(partition, 0) - SCAN_LIMIT)
    wanted = run_id.encode()
    found: list[LoggedEvent] = []
    async for batch in gw.log.scan(topic, partition, start, ends.get(partition, 0)):
        for record in batch:
            if record.key == wanted:
                logged = LoggedEvent.from_record(record)
                if logged.event.seq > 0:  # a seq-0 refusal belongs to no run's history
                    found.append(logged)
    found.sort(key=lambda e: e.event.seq)
    return found, start == starts.get(partition, 0)


def _event_out(logged: LoggedEvent) -> EventOut:
    event = logged.event
    occurred = from_ms(event.occurred_at_ms)
    assert occurred is not None
    return EventOut(
        seq=event.seq,
        type=type(event).__name__,
        occurred_at=occurred,
        causation_id=event.causation_id,
        correlation_id=event.correlation_id,
        data=event_fields(event),
        partition=logged.partition,
        offset=logged.offset,
    )


def _no_events(run_id: str, tenant: str) -> ApiError:
    return ApiError(404, f"no events of run {run_id!r} of tenant {tenant!r} in the log", [
        problem("path.run_id", "unknown, or of another tenant"),
    ])  # fmt: skip


def _kind(result: Result) -> str:
    return "run" if isinstance(result, RunResult) else "step"


def _result_out(result: Result) -> dict[str, Any]:
    return {"type": _kind(result), **dataclasses.asdict(result)}
