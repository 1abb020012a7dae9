"""Turning telemetry on for a process, from its settings, and off again."""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from apex.config import Settings
from apex.telemetry import flags, metrics, tracing
from apex.telemetry.exporters import JsonLinesSpanExporter

log = logging.getLogger("apex.telemetry")

EXPORTERS = ("none", "otlp", "console", "file", "memory")


@dataclass
class Telemetry:
    """What :func:`setup` started; :func:`shutdown` flushes and stops it."""

    service_name: str
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    span_exporter: Any = None
    """The span exporter (``InMemorySpanExporter`` with ``memory``: tests read it)."""
    metric_reader: InMemoryMetricReader | None = None
    """With ``memory``: metrics readable in-process, without the HTTP port."""
    metrics_address: tuple[str, int] | None = None
    """Where Prometheus text is served, when ``APEX_METRICS_PORT`` is set."""
    _http_server: Any = field(default=None, repr=False)
    _http_thread: threading.Thread | None = field(default=None, repr=False)

    def finished_spans(self) -> list[Any]:
        """The spans exported so far (``memory`` exporter only; else empty)."""
        if isinstance(self.span_exporter, InMemorySpanExporter):
            return list(self.span_exporter.get_finished_spans())
        return []


_current: Telemetry | None = None
_lock = threading.Lock()


def current() -> Telemetry | None:
    """The telemetry :func:`setup` started in this process, if any."""
    return _current


def setup(settings: Settings, service_name: str) -> Telemetry:
    """Start tracing and metrics as ``settings`` say; nothing when they say none.

    ``service_name`` is this process's default ``service.name``
    (``APEX_SERVICE_NAME`` overrides it). Call it once, at a process's entry
    point; calling it again replaces the previous setup (tests do).
    """
    global _current
    exporter_name = settings.otel_exporter.strip().lower()
    if exporter_name not in EXPORTERS:
        raise ValueError(
            f"APEX_OTEL_EXPORTER={settings.otel_exporter!r}: expected one of {', '.join(EXPORTERS)}"
        )
    with _lock:
        if _current is not None:
            _shutdown(_current)
            _current = None
        name = settings.service_name or service_name
        resource = Resource.create(
            {
                "service.name": name,
                "service.namespace": "apex",
                "service.instance.id": settings.instance_id
                or f"{socket.gethostname()}-{os.getpid()}",
            }
        )
        telemetry = Telemetry(service_name=name)
        if exporter_name != "none":
            _start_tracing(telemetry, settings, exporter_name, resource)
        readers: list[MetricReader] = []
        if exporter_name == "memory":
            telemetry.metric_reader = InMemoryMetricReader()
            readers.append(telemetry.metric_reader)
        if settings.metrics_port:
            readers.append(_start_prometheus(telemetry, settings))
        if readers:
            telemetry.meter_provider = MeterProvider(resource=resource, metric_readers=readers)
            metrics._install(telemetry.meter_provider.get_meter("apex"))
            flags.METRICS = True
        _current = telemetry
    log.info(
        "telemetry for %s: spans %s, metrics %s",
        name,
        exporter_name,
        f"http://{address[0]}:{address[1]}/metrics"
        if (address := telemetry.metrics_address)
        else "off",
    )
    return telemetry


def shutdown() -> None:
    """Flush what is buffered, stop the metrics server, turn the switches off."""
    global _current
    with _lock:
        if _current is not None:
            _shutdown(_current)
            _current = None


def _start_tracing(
    telemetry: Telemetry, settings: Settings, exporter_name: str, resource: Resource
) -> None:
    sampler = ParentBased(TraceIdRatioBased(max(0.0, min(1.0, settings.otel_sample_ratio))))
    provider = TracerProvider(resource=resource, sampler=sampler)
    processor: SpanProcessor
    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint.rstrip("/")
        exporter: Any = OTLPSpanExporter(
            endpoint=endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"
        )
        processor = BatchSpanProcessor(exporter)
    elif exporter_name == "console":
        exporter = ConsoleSpanExporter(service_name=telemetry.service_name)
        processor = BatchSpanProcessor(exporter)
    elif exporter_name == "file":
        path = (
            Path(settings.otel_file)
            if settings.otel_file
            else settings.home / "spans" / f"{telemetry.service_name}.jsonl"
        )
        exporter = JsonLinesSpanExporter(path)
        processor = SimpleSpanProcessor(exporter)  # each span on disk as it ends
    else:  # memory
        exporter = InMemorySpanExporter()
        processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    telemetry.tracer_provider = provider
    telemetry.span_exporter = exporter
    tracing._install(provider.get_tracer(tracing.INSTRUMENTATION))
    _offer_global(provider)
    flags.TRACING = True


def _offer_global(provider: TracerProvider) -> None:
    """Make it the global provider too, unless the application set its own.

    Then an agent's own spans (``trace.get_tracer(...)``) nest under its task's
    span and leave by the same exporter.
    """
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)


def _start_prometheus(telemetry: Telemetry, settings: Settings) -> MetricReader:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import (
        GC_COLLECTOR,
        PLATFORM_COLLECTOR,
        PROCESS_COLLECTOR,
        CollectorRegistry,
        start_http_server,
    )

    # A registry of our own: a second setup (tests) does not collide with the first.
    registry = CollectorRegistry(auto_describe=True)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    reader = PrometheusMetricReader(registry=registry)
    host, port = settings.metrics_host, settings.metrics_port
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise OSError(
            f"APEX_METRICS_PORT={port}: cannot listen on {host}:{port} ({exc.strerror}); "
            "give each process on this host its own port"
        ) from exc
    telemetry._http_server, telemetry._http_thread = server, thread
    telemetry.metrics_address = (host, server.server_address[1])
    return reader


def _shutdown(telemetry: Telemetry) -> None:
    flags.TRACING = False
    flags.METRICS = False
    tracing._install(trace.NoOpTracer())
    metrics._install(None)
    if telemetry.tracer_provider is not None:
        telemetry.tracer_provider.shutdown()
    if telemetry.meter_provider is not None:
        telemetry.meter_provider.shutdown()
    if telemetry._http_server is not None:
        telemetry._http_server.shutdown()
        telemetry._http_server.server_close()
