"""The pure parts of the local stack: broker config, cluster ids, log reading."""

from __future__ import annotations

import re
from pathlib import Path

from apex.config import Settings
from apex.devstack.kafka import KafkaService, new_cluster_id, render_server_properties
from apex.devstack.process import tail


def _props(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


def test_broker_listens_on_the_configured_loopback_ports_only(tmp_path: Path) -> None:
    settings = Settings.from_env({}, kafka_port=1111, kafka_controller_port=2222)

    props = _props(render_server_properties(settings, tmp_path / "data"))

    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1111,CONTROLLER://127.0.0.1:2222"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:1111"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:2222"
    assert props["process.roles"] == "broker,controller"
    assert props["log.dirs"] == str(tmp_path / "data")


def test_broker_never_creates_topics_implicitly(tmp_path: Path) -> None:
    props = _props(render_server_properties(Settings.from_env({}), tmp_path))

    assert props["auto.create.topics.enable"] == "false"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"


def test_cluster_id_is_a_kafka_uuid_string() -> None:
    ids = {new_cluster_id() for _ in range(200)}

    assert len(ids) == 200
    for cluster_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id)


def test_broker_version_is_read_from_the_last_start_in_its_log(tmp_path: Path) -> None:
    kafka = KafkaService(Settings.from_env({}, home=tmp_path))
    kafka.log_file.parent.mkdir(parents=True)
    kafka.log_file.write_text(
        "[x] INFO Kafka version: 4.0.0 (org.apache.kafka.common.utils.AppInfoParser)\n"
        "[y] INFO Kafka version: 4.1.1 (org.apache.kafka.common.utils.AppInfoParser)\n"
    )

    assert kafka.version() == "4.1.1"


def test_only_our_broker_command_line_is_recognised(tmp_path: Path) -> None:
    kafka = KafkaService(Settings.from_env({}, home=tmp_path))

    assert kafka.looks_like_ours(kafka.command())
    assert not kafka.looks_like_ours(["java", "kafka.Kafka", "/elsewhere/server.properties"])
    assert not kafka.looks_like_ours(["sleep", "100"])


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))

    assert tail(log, 3) == "line 97\nline 98\nline 99"
    assert tail(tmp_path / "missing.log") == ""
