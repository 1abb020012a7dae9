"""Telemetry: one trace per run across every Kafka hop, metrics, and logs that say which.

A process turns it on once, at its entry point, from its settings:

    from apex import telemetry
    telemetry.setup(settings, "apex-orchestrator")   # APEX_OTEL_EXPORTER, APEX_METRICS_PORT
    telemetry.configure_logging(settings.log_format)  # trace and run ids on every line
    ...
    telemetry.shutdown()                              # flush spans on the way out

Nothing is exported unless configured (``APEX_OTEL_EXPORTER=none`` and
``APEX_METRICS_PORT=0`` by default), and code on a hot path checks
``flags.TRACING`` / ``flags.METRICS`` (one attribute load) before doing any
telemetry work at all.

For code that sends or reads Apex records outside ``streams/`` and
``apex/worker/`` (the client, the gateway, the projector):

- :func:`producer_span` — ``with producer_span(topic, key=run_id) as headers:``
  send the record with ``headers`` (``None`` when tracing is off);
- :func:`consumer_span` — ``with consumer_span(record, group=...):`` process it;
- :func:`record_spans` — one span per record of a batch, once it is durable;
- :func:`http_server_span` — a request's span, child of its ``traceparent``;
- :func:`inject` / :func:`extract` — W3C context to and from Kafka headers.
"""

from apex.telemetry import flags, metrics
from apex.telemetry._setup import EXPORTERS, Telemetry, current, setup, shutdown
from apex.telemetry.logs import bind_run, configure_logging
from apex.telemetry.propagation import (
    TRACE_HEADERS,
    KafkaHeadersGetter,
    KafkaHeadersSetter,
    extract,
    inject,
    trace_headers,
)
from apex.telemetry.tracing import (
    batch_span,
    consumer_span,
    headers_of,
    http_server_span,
    producer_span,
    record_error,
    record_spans,
    send_span,
    tracer,
)

__all__ = [
    "EXPORTERS",
    "TRACE_HEADERS",
    "KafkaHeadersGetter",
    "KafkaHeadersSetter",
    "Telemetry",
    "batch_span",
    "bind_run",
    "configure_logging",
    "consumer_span",
    "current",
    "extract",
    "flags",
    "headers_of",
    "http_server_span",
    "inject",
    "metrics",
    "producer_span",
    "record_error",
    "record_spans",
    "send_span",
    "setup",
    "shutdown",
    "trace_headers",
    "tracer",
]
