"""Setting telemetry up from settings: exporters, switches, metrics, logs."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import NumberDataPoint

from apex import telemetry
from apex.config import Settings
from apex.telemetry import flags, metrics, tracing
from apex.telemetry.exporters import read_spans
from apex.telemetry.logs import JsonFormatter, TextFormatter, TraceContextFilter, bind_run


@pytest.fixture(autouse=True)
def _off_afterwards() -> Iterator[None]:
    yield
    telemetry.shutdown()
    assert not flags.TRACING and not flags.METRICS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nothing_is_on_by_default() -> None:
    telemetry.setup(Settings(), "apex-test")
    assert not flags.TRACING and not flags.METRICS
    assert isinstance(tracing.tracer(), trace.NoOpTracer)


def test_an_unknown_exporter_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"APEX_OTEL_EXPORTER='jaeger'.*none, otlp"):
        telemetry.setup(Settings(otel_exporter="jaeger"), "apex-test")


def test_memory_exporter_keeps_spans_and_metrics_in_process() -> None:
    on = telemetry.setup(Settings(otel_exporter="memory", service_name="svc"), "apex-test")
    assert flags.TRACING and flags.METRICS
    with tracing.producer_span("apex.commands", key="r") as headers:
        assert headers and headers[0][0] == "traceparent"
    metrics.get().commands.add(2, {"command_type": "StartRun"})
    (span,) = on.finished_spans()
    assert span.resource.attributes["service.name"] == "svc"
    assert on.metric_reader is not None
    data = on.metric_reader.get_metrics_data()
    assert data is not None
    names = {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    (point,) = names["apex.orchestrator.commands"].data.data_points
    assert isinstance(point, NumberDataPoint)
    assert point.value == 2 and point.attributes == {"command_type": "StartRun"}


def test_file_exporter_writes_a_json_line_per_span(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    telemetry.setup(Settings(otel_exporter="file", otel_file=str(path)), "apex-worker")
    record = SimpleNamespace(topic="apex.tasks.x", partition=1, offset=7, key=b"r", headers=None)
    with tracing.consumer_span(record, group="g") as span:
        tracing.record_error(span, ValueError("boom"))
    telemetry.shutdown()
    (line,) = read_spans(path)
    assert line["name"] == "process apex.tasks.x" and line["kind"] == "CONSUMER"
    assert line["service"] == "apex-worker" and line["parent_span_id"] is None
    assert line["status"] == "ERROR" and line["status_description"] == "ValueError: boom"
    assert line["events"][0]["attributes"]["exception.type"] == "ValueError"
    assert line["attributes"]["messaging.kafka.offset"] == 7


def test_metrics_port_serves_prometheus_text_on_loopback() -> None:
    port = free_port()
    on = telemetry.setup(Settings(metrics_port=port), "apex-test")
    assert on.metrics_address == ("127.0.0.1", port)
    assert flags.METRICS and not flags.TRACING
    metrics.get().dlq.add(1, {"stage": "orchestrator"})
    metrics.set_projection_backlog("runs", "apex.events", 3, 12)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    (dlq,) = [line for line in body.splitlines() if line.startswith("apex_dlq_records_total{")]
    assert 'stage="orchestrator"' in dlq and dlq.endswith(" 1.0")
    assert "apex_projection_lag_events" in body and 'partition="3"' in body
    metrics.clear_projection_backlog("runs", "apex.events", 3)
    telemetry.shutdown()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_taken_metrics_port_says_which_setting_to_change() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"APEX_METRICS_PORT={port}"):
            telemetry.setup(Settings(metrics_port=port), "apex-test")


def test_consumer_lag_reads_the_end_and_the_position_of_each_partition() -> None:
    from aiokafka import TopicPartition

    fetched = SimpleNamespace(has_valid_position=True, position=10, highwater=25, lso=20)
    unfetched = SimpleNamespace(has_valid_position=False, position=None, highwater=None, lso=None)
    no_lso = SimpleNamespace(has_valid_position=True, position=3, highwater=5, lso=-1)
    states = {
        TopicPartition("apex.commands", 4): fetched,
        TopicPartition("apex.commands", 5): unfetched,
        TopicPartition("apex.commands", 6): no_lso,
    }
    assignment = SimpleNamespace(tps=frozenset(states), state_value=states.get)
    consumer = SimpleNamespace(
        _subscription=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment))
    )
    assert metrics.consumer_lag(consumer) == {
        ("apex.commands", 4): 10,  # to the last stable offset: read_committed stops there
        ("apex.commands", 6): 2,  # no LSO from the broker: to the highwater
    }
    assert metrics.log_end(consumer, TopicPartition("apex.commands", 4)) == 20
    assert metrics.log_end(consumer, TopicPartition("apex.commands", 5)) is None
    assert metrics.log_end(consumer, TopicPartition("apex.commands", 9)) is None


# -- logs ---------------------------------------------------------------------------------------


def make_record(message: str = "hello", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("apex.test", logging.INFO, __file__, 1, message, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    TraceContextFilter().filter(record)
    return record


def test_log_records_carry_the_current_trace_and_the_bound_run() -> None:
    telemetry.setup(Settings(otel_exporter="memory"), "apex-test")
    with tracing.tracer().start_as_current_span("work") as span, bind_run("run-7"):
        record = make_record()
    context = span.get_span_context()
    assert record.trace_id == f"{context.trace_id:032x}"  # type: ignore[attr-defined]
    assert record.span_id == f"{context.span_id:016x}"  # type: ignore[attr-defined]
    assert record.run_id == "run-7"  # type: ignore[attr-defined]
    line = TextFormatter().format(record)
    assert line.endswith(
        f"hello [run=run-7 trace={context.trace_id:032x} span={context.span_id:016x}]"
    )


def test_an_explicit_run_id_wins_and_unknown_ids_are_left_out_of_text() -> None:
    record = make_record(run_id="run-x")
    assert record.trace_id == ""  # type: ignore[attr-defined]
    assert TextFormatter().format(record).endswith("hello [run=run-x]")
    assert TextFormatter().format(make_record()).endswith("apex.test: hello")


def test_json_lines_hold_the_ids_and_the_traceback() -> None:
    try:
        raise RuntimeError("bad")
    except RuntimeError:
        import sys

        record = make_record(run_id="r1")
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "hello" and entry["level"] == "INFO"
    assert entry["run_id"] == "r1" and entry["trace_id"] == ""
    assert "RuntimeError: bad" in entry["exc"]


def test_configure_logging_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="APEX_LOG_FORMAT='xml'"):
        telemetry.configure_logging("xml")


def test_settings_read_the_telemetry_variables() -> None:
    settings = Settings.from_env(
        {
            "APEX_OTEL_EXPORTER": "otlp",
            "APEX_OTLP_ENDPOINT": "http://collector:4318",
            "APEX_METRICS_PORT": "19464",
            "APEX_LOG_FORMAT": "json",
            "APEX_OTEL_SAMPLE_RATIO": "0.25",
        }
    )
    assert replace(settings) == settings
    assert (settings.otel_exporter, settings.metrics_port, settings.log_format) == (
        "otlp",
        19464,
        "json",
    )
    assert settings.otel_sample_ratio == 0.25


def test_otlp_exporter_posts_spans_to_the_collector_endpoint() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[tuple[str, str]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        telemetry.setup(Settings(otel_exporter="otlp", otlp_endpoint=endpoint), "apex-test")
        with tracing.producer_span("apex.commands", key="r"):
            pass
        telemetry.shutdown()  # flushes the batch
    finally:
        server.shutdown()
        server.server_close()
    assert received == [("/v1/traces", "application/x-protobuf")]
