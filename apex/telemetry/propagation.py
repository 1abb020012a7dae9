"""W3C trace context in Kafka headers.

Kafka headers, as aiokafka gives and takes them, are a sequence of
``(str, bytes)`` pairs that may repeat a key. The getter and setter below let
OpenTelemetry's W3C ``TraceContextTextMapPropagator`` read and write
``traceparent`` / ``tracestate`` there, so one run is one trace across every
hop: client → ``apex.commands`` → orchestrator → ``apex.tasks.*`` → worker →
``apex.commands`` → orchestrator → ``apex.events`` / ``apex.results`` → readers.

    headers = inject([])                 # the current span's context
    producer.send(topic, value, headers=headers)

    with tracer.start_as_current_span("process x", context=extract(record.headers)):
        ...

These work whether tracing is on or off (they only read or write context); the
decision to pay for them is the caller's (see :mod:`apex.telemetry.flags`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Headers = list[tuple[str, bytes]]
"""Headers as Apex produces them."""

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACE_HEADERS = frozenset({TRACEPARENT, TRACESTATE})


class KafkaHeadersGetter(Getter[Sequence[tuple[str, Any]] | None]):
    """Reads header values (bytes, bytearray or str) as text; the last value of a key wins."""

    def get(self, carrier: Sequence[tuple[str, Any]] | None, key: str) -> list[str] | None:
        found: list[str] = []
        for name, value in carrier or ():
            if name == key and value is not None:
                found.append(value if isinstance(value, str) else bytes(value).decode("latin-1"))
        # W3C: a single traceparent; if a record carries several (a badly behaved
        # producer appended rather than replaced), the last one is the nearest hop.
        return found[-1:] or None

    def keys(self, carrier: Sequence[tuple[str, Any]] | None) -> list[str]:
        return [name for name, _ in carrier or ()]


class KafkaHeadersSetter(Setter[Headers]):
    """Writes a header, replacing any earlier value of the same key."""

    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier[:] = [(name, v) for name, v in carrier if name != key]
        carrier.append((key, value.encode("latin-1")))


GETTER = KafkaHeadersGetter()
SETTER = KafkaHeadersSetter()
PROPAGATOR = TraceContextTextMapPropagator()


def inject(headers: Headers | None = None, context: Context | None = None) -> Headers:
    """Write ``context`` (default: the current one) into ``headers``; return them.

    Nothing is written when the context holds no valid span.
    """
    carrier: Headers = [] if headers is None else headers
    PROPAGATOR.inject(carrier, context=context, setter=SETTER)
    return carrier


def extract(headers: Sequence[tuple[str, Any]] | None, context: Context | None = None) -> Context:
    """The trace context ``headers`` carry, on top of ``context`` (default: an empty one).

    Without a valid ``traceparent`` the result holds no span, so a span started
    in it is a new root.
    """
    return PROPAGATOR.extract(headers, context=context or Context(), getter=GETTER)


def trace_headers(headers: Iterable[tuple[str, Any]] | None) -> Headers:
    """Only the trace-context headers of ``headers``, as bytes: for passing them on unchanged."""
    return [(name, bytes(value)) for name, value in headers or () if name in TRACE_HEADERS]


def without_trace(headers: Iterable[tuple[str, Any]] | None) -> Headers:
    """``headers`` less the trace-context ones."""
    return [(name, bytes(value)) for name, value in headers or () if name not in TRACE_HEADERS]
