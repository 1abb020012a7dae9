"""The Grafana dashboard and the infra configs agree with the metrics Apex serves."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from apex import telemetry
from apex.config import REPO_ROOT, Settings
from apex.telemetry import metrics

INFRA = REPO_ROOT / "infra"
DASHBOARD = INFRA / "grafana" / "dashboards" / "apex.json"


class FakeConsumer:
    """Just the part of aiokafka's consumer that the lag gauge reads."""

    def __init__(self, assignment: SimpleNamespace) -> None:
        self._subscription = SimpleNamespace(subscription=SimpleNamespace(assignment=assignment))


@pytest.fixture
def served() -> Iterator[set[str]]:
    """Every sample name a process serves once each instrument has a value."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    telemetry.setup(Settings(metrics_port=port), "apex-test")
    owner = object()
    state = SimpleNamespace(has_valid_position=True, position=1, highwater=2, lso=2)
    tp = TopicPartition("apex.commands", 0)
    consumer = FakeConsumer(SimpleNamespace(tps=frozenset({tp}), state_value={tp: state}.get))
    try:
        instruments = metrics.get()
        for name in vars(instruments):
            instrument = getattr(instruments, name)
            if hasattr(instrument, "add"):
                instrument.add(1)
            else:
                instrument.record(0.01)
        metrics.observe_active_runs(owner, lambda: [(1, {"partition": "0"})])
        metrics.watch_consumer(consumer, "g")
        metrics.set_projection_backlog("runs", "apex.events", 0, 3)
        url = f"http://127.0.0.1:{port}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        yield {
            sample.name
            for family in text_string_to_metric_families(body)
            for sample in family.samples
        }
    finally:
        metrics.forget_active_runs(owner)
        metrics.unwatch_consumer(consumer)
        metrics.clear_projection_backlog("runs", "apex.events", 0)
        telemetry.shutdown()


def dashboard_metrics() -> set[str]:
    exprs = [
        target["expr"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel.get("targets", ())
    ]
    return {
        name for expr in exprs for name in re.findall(r"\b(apex_[a-z_]+|process_[a-z_]+)", expr)
    }


def test_every_metric_the_dashboard_plots_is_served(served: set[str]) -> None:
    wanted = dashboard_metrics()
    assert len(wanted) >= 15
    assert wanted - served == set()


def test_the_dashboard_plots_every_apex_metric(served: set[str]) -> None:
    apex_families = {
        re.sub(r"_(bucket|count|sum|created)$", "", name)
        for name in served
        if name.startswith("apex_")
    }
    plotted = {re.sub(r"_(bucket|count|sum)$", "", name) for name in dashboard_metrics()}
    assert apex_families - plotted == set()


def test_provisioning_points_the_dashboard_at_its_data_source() -> None:
    sources = yaml.safe_load((INFRA / "grafana/provisioning/datasources/apex.yaml").read_text())
    uids = {source["uid"] for source in sources["datasources"]}
    panels = json.loads(DASHBOARD.read_text())["panels"]
    used = {p["datasource"]["uid"] for p in panels if "datasource" in p}
    assert used <= uids
    providers = yaml.safe_load((INFRA / "grafana/provisioning/dashboards/apex.yaml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_collector_and_prometheus_configs_are_complete() -> None:
    collector = yaml.safe_load((INFRA / "otel/collector.yaml").read_text())
    traces = collector["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"] and traces["exporters"] == ["otlp/jaeger"]
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    scrape = yaml.safe_load((INFRA / "prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"][0] for job in scrape["scrape_configs"]
    }
    assert targets["apex-orchestrator"] == "127.0.0.1:19464"
    assert all(target.startswith("127.0.0.1:") for target in targets.values())


def test_compose_runs_the_collector_jaeger_prometheus_and_grafana() -> None:
    compose = yaml.safe_load(Path(REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"otel-collector", "jaeger", "prometheus", "grafana"} <= set(services)
    for name in ("otel-collector", "jaeger", "gateway"):
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"])
