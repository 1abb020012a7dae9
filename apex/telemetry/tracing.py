"""Spans for Kafka hops, named and attributed by OTel's messaging conventions.

One run is one trace. Every record Apex produces carries the W3C context of
the span that produced it, and every consumer starts its span as a child of
the context its record carries:

    client          send apex.commands          (PRODUCER, root of the run's trace)
    orchestrator    process apex.commands       (CONSUMER, one per command)
                      send apex.tasks.<cap>     (PRODUCER, one per dispatch)
    worker            process apex.tasks.<cap>  (CONSUMER, one per attempt)
    orchestrator        process apex.commands   (the worker's reports)
    projector / timers / subscribers: children of the event or result they read

Span names are ``{operation} {destination}``; attributes are
``messaging.system=kafka``, ``messaging.destination.name``,
``messaging.operation.type`` / ``.name``, ``messaging.kafka.message.key``,
``messaging.kafka.offset``, ``messaging.destination.partition.id``,
``messaging.consumer.group.name``, and Apex's own ``apex.*`` (run id,
command type, step, attempt, capability).

Every helper here is meant to run only behind ``if flags.TRACING:``; called
with tracing off they still work (the tracer is then a no-op tracer) but the
caller has paid for the call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer

from apex.telemetry import flags
from apex.telemetry.propagation import (
    PROPAGATOR,
    TRACEPARENT,
    TRACESTATE,
    Headers,
    extract,
    inject,
)

INSTRUMENTATION = "apex"

# OTel messaging semantic conventions (v1.27+ names).
MESSAGING_SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
PARTITION = "messaging.destination.partition.id"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
MESSAGE_KEY = "messaging.kafka.message.key"
OFFSET = "messaging.kafka.offset"
CONSUMER_GROUP = "messaging.consumer.group.name"
BATCH_COUNT = "messaging.batch.message_count"

# Apex's own.
RUN_ID = "apex.run_id"
COMMAND_TYPE = "apex.command_type"
EVENTS = "apex.events"
STEP_ID = "apex.step_id"
ATTEMPT = "apex.attempt"
CAPABILITY = "apex.capability"
OUTCOME = "apex.outcome"

Attributes = Mapping[str, Any]

_tracer: Tracer = trace.NoOpTracer()


def tracer() -> Tracer:
    """Apex's tracer: the configured one, or a no-op tracer before :func:`apex.telemetry.setup`."""
    return _tracer


def _install(new: Tracer) -> None:
    global _tracer
    _tracer = new


# -- consuming ----------------------------------------------------------------------------


@contextmanager
def consumer_span(
    record: Any,
    *,
    group: str | None = None,
    operation: str = "process",
    attributes: Attributes | None = None,
    context: Context | None = None,
    links: Sequence[Link] = (),
    name: str | None = None,
) -> Iterator[Span]:
    """A CONSUMER span ``process <topic>`` for one consumed ``record``, current in the block.

    Its parent is ``context`` when given (see :func:`join_run`), else the
    context the record's headers carry, else none (a new trace). An exception
    leaving the block is recorded on the span and sets its status to ERROR.
    """
    attrs = record_attributes(record, group=group, operation=operation)
    if attributes:
        attrs.update(attributes)
    with _tracer.start_as_current_span(
        name or f"{operation} {record.topic}",
        context=context if context is not None else extract(record.headers),
        kind=SpanKind.CONSUMER,
        attributes=attrs,
        links=links,
    ) as span:
        yield span


def join_run(
    headers: Sequence[tuple[str, Any]] | None, run_root: trace.SpanContext | None
) -> tuple[Context, Sequence[Link]]:
    """Parent and links of the span handling a record of a run whose trace began at ``run_root``.

    One run, one trace: a record whose context belongs to the run's trace (a
    worker's report) keeps it as parent. A record without context (an
    uninstrumented client, a script) gets the run's root as parent. A record
    whose context belongs to another trace (a client that opened a new trace
    to approve a step) gets the run's root as parent and a link to its own
    context, so neither trace loses the hop.
    """
    incoming = extract(headers)
    root = run_root
    if root is None:
        return incoming, ()
    caller = _span_context(incoming)
    if caller is not None and caller.trace_id == root.trace_id:
        return incoming, ()
    parent = trace.set_span_in_context(trace.NonRecordingSpan(root))
    return parent, (Link(caller, {"apex.link": "caller"}),) if caller is not None else ()


def record_spans(
    records: Iterable[Any],
    *,
    group: str | None = None,
    start_time_ns: int,
    end_time_ns: int | None = None,
    attributes: Attributes | None = None,
    operation: str = "process",
) -> int:
    """One finished CONSUMER span per record, each a child of the context its headers carry.

    For consumers that apply records in batches (the projector): call it once
    the batch is durable, with the batch's start time, so each run's trace
    shows when its events were applied. Returns the number of spans made.
    """
    made = 0
    for record in records:
        attrs = record_attributes(record, group=group, operation=operation)
        if attributes:
            attrs.update(attributes)
        span = _tracer.start_span(
            f"{operation} {record.topic}",
            context=extract(record.headers),
            kind=SpanKind.CONSUMER,
            attributes=attrs,
            start_time=start_time_ns,
        )
        span.end(end_time=end_time_ns)
        made += 1
    return made


@contextmanager
def batch_span(
    topic: str,
    records: Sequence[Any],
    *,
    group: str | None = None,
    operation: str = "process",
    attributes: Attributes | None = None,
) -> Iterator[Span]:
    """A CONSUMER span for a batch of ``records``, linked to the context of each (semconv)."""
    links = [Link(ctx) for r in records if (ctx := _span_context(extract(r.headers))) is not None]
    attrs: dict[str, Any] = {
        MESSAGING_SYSTEM: "kafka",
        DESTINATION: topic,
        OPERATION_TYPE: operation,
        OPERATION_NAME: operation,
        BATCH_COUNT: len(records),
    }
    if group:
        attrs[CONSUMER_GROUP] = group
    if attributes:
        attrs.update(attributes)
    with _tracer.start_as_current_span(
        f"{operation} {topic}", kind=SpanKind.CONSUMER, attributes=attrs, links=links
    ) as span:
        yield span


# -- producing ------------------------------------------------------------------------------


@contextmanager
def producer_span(
    topic: str,
    *,
    key: str | bytes | None = None,
    attributes: Attributes | None = None,
    context: Context | None = None,
) -> Iterator[Headers | None]:
    """A PRODUCER span ``send <topic>``; yields the headers to send the record with.

    With tracing off it yields ``None`` (aiokafka takes ``headers=None``) and
    costs one flag check:

        with producer_span(topic, key=run_id, attributes={RUN_ID: run_id}) as headers:
            await producer.send_and_wait(topic, value, key=run_id.encode(), headers=headers)

    The span is a child of ``context`` (default: the current context), so a
    client's caller that has a span of its own gets the run inside its trace.
    """
    if not flags.TRACING:
        yield None
        return
    attrs: dict[str, Any] = {
        MESSAGING_SYSTEM: "kafka",
        DESTINATION: topic,
        OPERATION_TYPE: "send",
        OPERATION_NAME: "send",
    }
    if key is not None:
        attrs[MESSAGE_KEY] = key if isinstance(key, str) else key.decode("utf-8", "replace")
    if attributes:
        attrs.update(attributes)
    with _tracer.start_as_current_span(
        f"send {topic}", context=context, kind=SpanKind.PRODUCER, attributes=attrs
    ) as span:
        yield inject([], trace.set_span_in_context(span))


def send_span(
    parent: Span,
    topic: str,
    *,
    key: str | None = None,
    attributes: Attributes | None = None,
) -> Headers:
    """A finished PRODUCER span ``send <topic>``, child of ``parent``: the headers of its record.

    For records produced inside a transaction whose send is not awaited one by
    one (the orchestrator's dispatches): the span marks the record's creation.
    """
    attrs: dict[str, Any] = {
        MESSAGING_SYSTEM: "kafka",
        DESTINATION: topic,
        OPERATION_TYPE: "send",
        OPERATION_NAME: "send",
    }
    if key is not None:
        attrs[MESSAGE_KEY] = key
    if attributes:
        attrs.update(attributes)
    span = _tracer.start_span(
        f"send {topic}",
        context=trace.set_span_in_context(parent),
        kind=SpanKind.PRODUCER,
        attributes=attrs,
    )
    span.end()
    return headers_of(span)


def headers_of(span: Span) -> Headers:
    """The trace headers that make ``span`` the parent of a record's consumer.

    Written directly (W3C ``traceparent`` version 00, and ``tracestate`` when
    the span has one) rather than through the propagator: it runs once per
    record produced, and the result is the same.
    """
    context = span.get_span_context()
    if not context.is_valid:
        return []
    headers = [
        (
            TRACEPARENT,
            b"00-%032x-%016x-%02x"
            % (context.trace_id, context.span_id, context.trace_flags & 0xFF),
        )
    ]
    if context.trace_state:
        headers.append((TRACESTATE, context.trace_state.to_header().encode("latin-1")))
    return headers


def unsampled(headers: Sequence[tuple[str, Any]] | None) -> Headers | None:
    """The trace headers of a record whose trace was *not* sampled, else ``None``.

    A consumer on a hot path can then skip its span (it would not be recorded:
    the sampler follows the parent) and pass the context on as it came, so
    the hops after it are not recorded either. Reads only the flags byte.
    """
    for name, value in headers or ():
        if name == TRACEPARENT:
            raw = bytes(value)
            if len(raw) == 55 and raw[:3] == b"00-" and not int(raw[53:55], 16) & 1:
                return [(k, bytes(v)) for k, v in headers or () if k in (TRACEPARENT, TRACESTATE)]
            return None
    return None


def span_context_of(headers: Sequence[tuple[str, Any]] | None) -> trace.SpanContext | None:
    """The span context ``headers`` carry, or ``None`` when they carry no valid one."""
    return _span_context(extract(headers)) if headers else None


# -- HTTP ---------------------------------------------------------------------------------------


@contextmanager
def http_server_span(
    method: str, route: str, headers: Mapping[str, str] | None = None
) -> Iterator[Span | None]:
    """A SERVER span ``{method} {route}`` for an HTTP request, current in the block.

    Its parent is the W3C context of the request's ``traceparent`` header, so a
    run started over HTTP by a traced upstream joins the upstream's trace.
    Yields ``None`` (and costs one flag check) when tracing is off.
    """
    if not flags.TRACING:
        yield None
        return
    parent = PROPAGATOR.extract(headers or {})
    with _tracer.start_as_current_span(
        f"{method} {route}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "http.route": route},
    ) as span:
        yield span


# -- outcomes -----------------------------------------------------------------------------


def record_error(span: Span, error: BaseException | str, *, description: str | None = None) -> None:
    """Mark ``span`` failed: an ``exception`` event (type, message, stack) and status ERROR."""
    if isinstance(error, BaseException):
        span.record_exception(error)
        text = description or f"{type(error).__name__}: {error}"
    else:
        span.add_event("exception", {"exception.type": "Error", "exception.message": error})
        text = description or error
    span.set_status(Status(StatusCode.ERROR, text[:1000]))


def record_attributes(
    record: Any, *, group: str | None = None, operation: str = "process"
) -> dict[str, Any]:
    """Messaging attributes of a consumed aiokafka ``ConsumerRecord``."""
    attrs: dict[str, Any] = {
        MESSAGING_SYSTEM: "kafka",
        DESTINATION: record.topic,
        PARTITION: str(record.partition),
        OPERATION_TYPE: operation,
        OPERATION_NAME: operation,
        OFFSET: record.offset,
    }
    if record.key is not None:
        attrs[MESSAGE_KEY] = bytes(record.key).decode("utf-8", "replace")
    if group:
        attrs[CONSUMER_GROUP] = group
    return attrs


def _span_context(context: Context) -> trace.SpanContext | None:
    span_context = trace.get_current_span(context).get_span_context()
    return span_context if span_context.is_valid else None
