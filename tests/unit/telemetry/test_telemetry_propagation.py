"""W3C trace context in Kafka headers: lists of (str, bytes) pairs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from apex.telemetry import flags, tracing
from apex.telemetry.propagation import (
    GETTER,
    SETTER,
    extract,
    inject,
    trace_headers,
    without_trace,
)
from apex.telemetry.tracing import producer_span

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def span_context(state: TraceState | None = None) -> SpanContext:
    return SpanContext(
        TRACE_ID,
        SPAN_ID,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=state,
    )


def in_context(context: SpanContext) -> Context:
    return trace.set_span_in_context(NonRecordingSpan(context))


def test_inject_writes_traceparent_as_bytes() -> None:
    headers = inject([("apex.chain", b"x")], in_context(span_context()))
    assert headers == [("apex.chain", b"x"), ("traceparent", TRACEPARENT)]


def test_inject_then_extract_gives_the_same_span_context() -> None:
    state = TraceState([("vendor", "value")])
    headers = inject([], in_context(span_context(state)))
    assert ("tracestate", b"vendor=value") in headers
    extracted = trace.get_current_span(extract(headers)).get_span_context()
    assert (extracted.trace_id, extracted.span_id) == (TRACE_ID, SPAN_ID)
    assert extracted.is_remote and extracted.trace_flags.sampled
    assert extracted.trace_state == state


def test_injecting_twice_replaces_rather_than_appends() -> None:
    headers = [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]
    inject(headers, in_context(span_context()))
    assert [v for k, v in headers if k == "traceparent"] == [TRACEPARENT]


def test_no_context_writes_nothing() -> None:
    assert inject([], Context()) == []


@pytest.mark.parametrize("value", [TRACEPARENT, bytearray(TRACEPARENT), TRACEPARENT.decode()])
def test_extract_reads_bytes_bytearray_and_str(value: object) -> None:
    context = extract([("other", b"1"), ("traceparent", value)])
    assert trace.get_current_span(context).get_span_context().span_id == SPAN_ID


def test_extract_takes_the_last_of_repeated_headers() -> None:
    first = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"
    context = extract([("traceparent", first), ("traceparent", TRACEPARENT)])
    assert trace.get_current_span(context).get_span_context().span_id == SPAN_ID


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [],
        [("traceparent", b"garbage")],
        [("traceparent", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01")],
        [("traceparent", None)],
    ],
)
def test_missing_or_invalid_context_extracts_no_span(headers: object) -> None:
    context = extract(headers)  # type: ignore[arg-type]
    assert not trace.get_current_span(context).get_span_context().is_valid


def test_getter_and_setter_on_raw_lists() -> None:
    carrier: list[tuple[str, bytes]] = []
    SETTER.set(carrier, "traceparent", "a")
    SETTER.set(carrier, "traceparent", "b")
    assert carrier == [("traceparent", b"b")]
    assert GETTER.get(carrier, "traceparent") == ["b"]
    assert GETTER.get(carrier, "tracestate") is None
    assert GETTER.keys(carrier) == ["traceparent"]


def test_trace_headers_and_without_trace_split_the_headers() -> None:
    headers = [("traceparent", TRACEPARENT), ("tracestate", b"a=b"), ("apex.chain", b"c")]
    assert trace_headers(headers) == headers[:2]
    assert without_trace(headers) == headers[2:]
    assert trace_headers(None) == [] and without_trace(None) == []


def test_producer_span_yields_no_headers_when_tracing_is_off() -> None:
    assert flags.TRACING is False
    with producer_span("apex.commands", key="run-1") as headers:
        assert headers is None


@pytest.fixture
def tracing_on() -> Iterator[InMemorySpanExporter]:
    """Apex's tracer records into memory for the test; off again afterwards."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = tracing.tracer()
    tracing._install(provider.get_tracer("test"))
    flags.TRACING = True
    try:
        yield exporter
    finally:
        flags.TRACING = False
        tracing._install(previous)


def test_producer_span_headers_make_the_consumer_its_child(
    tracing_on: InMemorySpanExporter,
) -> None:
    from types import SimpleNamespace

    from apex.telemetry.tracing import consumer_span

    with producer_span("apex.commands", key="run-1", attributes={"apex.run_id": "run-1"}) as sent:
        assert sent is not None
    record = SimpleNamespace(
        topic="apex.commands", partition=2, offset=41, key=b"run-1", headers=tuple(sent)
    )
    with consumer_span(record, group="apex.orchestrator"):
        pass
    producer, consumer = tracing_on.get_finished_spans()
    assert producer.name == "send apex.commands" and producer.kind.name == "PRODUCER"
    assert consumer.name == "process apex.commands" and consumer.kind.name == "CONSUMER"
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert consumer.attributes == {
        "messaging.system": "kafka",
        "messaging.destination.name": "apex.commands",
        "messaging.destination.partition.id": "2",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.kafka.offset": 41,
        "messaging.kafka.message.key": "run-1",
        "messaging.consumer.group.name": "apex.orchestrator",
    }


def test_consumer_span_without_context_joins_the_run_root(
    tracing_on: InMemorySpanExporter,
) -> None:
    from types import SimpleNamespace

    from apex.telemetry.tracing import consumer_span, join_run

    record = SimpleNamespace(topic="t", partition=0, offset=0, key=None, headers=None)
    parent, links = join_run(record.headers, span_context())
    with consumer_span(record, context=parent, links=links):
        pass
    (span,) = tracing_on.get_finished_spans()
    assert span.context.trace_id == TRACE_ID
    assert span.parent is not None and span.parent.span_id == SPAN_ID
    assert not span.links


def test_join_run_keeps_a_context_of_the_runs_own_trace() -> None:
    from apex.telemetry.tracing import join_run

    own = b"00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"
    parent, links = join_run([("traceparent", own)], span_context())
    assert trace.get_current_span(parent).get_span_context().span_id == 0x1111111111111111
    assert links == ()


def test_join_run_links_a_context_of_another_trace_under_the_run_root() -> None:
    from apex.telemetry.tracing import join_run

    other = b"00-" + b"9" * 32 + b"-" + b"8" * 16 + b"-01"
    parent, links = join_run([("traceparent", other)], span_context())
    root = trace.get_current_span(parent).get_span_context()
    assert (root.trace_id, root.span_id) == (TRACE_ID, SPAN_ID)
    (link,) = links
    assert link.context.trace_id == int("9" * 32, 16)


def test_join_run_without_a_root_keeps_the_incoming_context() -> None:
    from apex.telemetry.tracing import join_run

    parent, links = join_run([("traceparent", TRACEPARENT)], None)
    assert trace.get_current_span(parent).get_span_context().span_id == SPAN_ID
    assert links == ()


def test_headers_of_a_span_match_what_the_propagator_writes() -> None:
    from apex.telemetry.tracing import headers_of

    for state in (None, TraceState([("vendor", "value"), ("other", "x")])):
        span = NonRecordingSpan(span_context(state))
        assert headers_of(span) == inject([], trace.set_span_in_context(span))
    assert headers_of(NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)) == []


def test_unsampled_recognises_a_trace_that_is_not_recorded() -> None:
    from apex.telemetry.tracing import unsampled

    off = TRACEPARENT[:-2] + b"00"
    headers = [("apex.chain", b"c"), ("traceparent", off), ("tracestate", b"a=b")]
    assert unsampled(headers) == [("traceparent", off), ("tracestate", b"a=b")]
    assert unsampled([("traceparent", TRACEPARENT)]) is None  # sampled
    assert unsampled([("traceparent", b"garbage")]) is None
    assert unsampled(None) is None and unsampled([]) is None


def test_http_server_span_continues_the_requests_trace(
    tracing_on: InMemorySpanExporter,
) -> None:
    from apex.telemetry.tracing import http_server_span

    with http_server_span("POST", "/v1/runs", {"traceparent": TRACEPARENT.decode()}) as span:
        assert span is not None
    (finished,) = tracing_on.get_finished_spans()
    assert finished.name == "POST /v1/runs" and finished.kind.name == "SERVER"
    assert finished.context.trace_id == TRACE_ID
    assert finished.parent is not None and finished.parent.span_id == SPAN_ID
