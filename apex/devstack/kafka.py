"""Apache Kafka in KRaft mode (one combined broker + controller), run from Maven jars.

The jars are resolved once by ``infra/kafka/pom.xml`` into
``<home>/kafka/libs-<version>/``; a marker written after a complete copy (with
the pom's hash) means later starts run no Maven and download nothing. Storage
is formatted with Kafka's own ``StorageTool`` the first time.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import re
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError

from apex.config import REPO_ROOT, Settings
from apex.devstack.process import StackError, port_in_use, tail
from apex.devstack.service import LocalService

INFRA_DIR = REPO_ROOT / "infra" / "kafka"
POM = INFRA_DIR / "pom.xml"
LOG4J_CONFIG = INFRA_DIR / "log4j2.yaml"
_MARKER = ".apex-resolved"
_VERSION_LINE = re.compile(r"Kafka version: (\S+)")


class KafkaService(LocalService):
    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.kafka_dir = self.home / "kafka"
        self.libs_dir = self.kafka_dir / f"libs-{settings.kafka_version}"
        self.data_dir = self.kafka_dir / "data"
        self.server_properties = self.kafka_dir / "server.properties"

    @property
    def address(self) -> str:
        return f"{self.settings.kafka_host}:{self.settings.kafka_port}"

    @property
    def ports(self) -> Sequence[tuple[str, int]]:
        host = self.settings.kafka_host
        return [(host, self.settings.kafka_port), (host, self.settings.kafka_controller_port)]

    def looks_like_ours(self, cmdline: Sequence[str]) -> bool:
        return "kafka.Kafka" in cmdline and str(self.server_properties) in cmdline

    # -- prepare -------------------------------------------------------------------
    def prepare(self) -> None:
        self._require(
            self.settings.java, "a Java 17+ runtime (e.g. apt-get install openjdk-17-jre)"
        )
        self.ensure_jars()
        self.kafka_dir.mkdir(parents=True, exist_ok=True)
        self.server_properties.write_text(render_server_properties(self.settings, self.data_dir))
        if not (self.data_dir / "meta.properties").exists():
            self.format_storage()

    def ensure_jars(self) -> Path:
        """Resolve the broker's jars with Maven unless a complete copy is cached."""
        pom_hash = hashlib.sha256(POM.read_bytes()).hexdigest()
        marker = self.libs_dir / _MARKER
        if marker.exists() and marker.read_text().startswith(pom_hash):
            return self.libs_dir
        mvn = self._require(self.settings.maven, "Maven 3 (e.g. apt-get install maven)")
        staging = self.libs_dir.with_name(self.libs_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        maven_log = self.home / "logs" / "maven.log"
        maven_log.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(POM),
            f"-Dkafka.version={self.settings.kafka_version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        with open(maven_log, "w") as log:
            done = subprocess.run(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
            )
        jars = sorted(p.name for p in staging.glob("*.jar")) if staging.exists() else []
        if done.returncode != 0 or not any(j.startswith("kafka_") for j in jars):
            raise StackError(
                f"Maven could not resolve Kafka {self.settings.kafka_version} "
                f"(exit {done.returncode}); is Maven Central reachable?\n"
                f"Command: {' '.join(argv)}\nLast lines of {maven_log}:\n{tail(maven_log)}"
            )
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        staging.rename(self.libs_dir)
        marker.write_text(pom_hash + "\n" + "\n".join(jars) + "\n")
        return self.libs_dir

    def format_storage(self) -> None:
        """Format the KRaft metadata log once, with a fresh cluster id."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        format_log = self.home / "logs" / "kafka-format.log"
        argv = [
            self.settings.java, *self._jvm_logging(), "-cp", self._classpath(),
            "kafka.tools.StorageTool", "format", "--ignore-formatted",
            "-t", new_cluster_id(), "-c", str(self.server_properties),
        ]  # fmt: skip
        with open(format_log, "w") as log:
            done = subprocess.run(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
            )
        if done.returncode != 0:
            raise StackError(
                f"formatting Kafka storage in {self.data_dir} failed (exit {done.returncode}).\n"
                f"Last lines of {format_log}:\n{tail(format_log)}"
            )

    def command(self) -> list[str]:
        return [
            self.settings.java,
            f"-Xmx{self.settings.kafka_heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            "-Djava.net.preferIPv4Stack=true",  # listeners show as 127.0.0.1, not ::ffff:
            *self._jvm_logging(),
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(self.server_properties),
        ]

    # -- readiness -----------------------------------------------------------------
    async def probe(self) -> str | None:
        return await kafka_answers(self.address)

    def version(self) -> str | None:
        """The broker version, as the running broker logged it at start.

        Each start begins a fresh log (the previous one becomes ``kafka.log.1``),
        so the line is near the top however long the broker has been running.
        """
        found = None
        with contextlib.suppress(FileNotFoundError), open(self.log_file, errors="replace") as log:
            for _, line in zip(range(50_000), log, strict=False):
                match = _VERSION_LINE.search(line)
                if match:
                    found = match.group(1)
        return found

    # -- helpers -------------------------------------------------------------------
    def _classpath(self) -> str:
        return str(self.libs_dir / "*")  # expanded by the JVM, not by a shell

    def _jvm_logging(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={LOG4J_CONFIG}"]

    @staticmethod
    def _require(executable: str, what: str) -> str:
        found = shutil.which(executable)
        if found is None:
            raise StackError(f"`{executable}` not found on PATH; the local Kafka needs {what}.")
        return found


def render_server_properties(settings: Settings, data_dir: Path) -> str:
    """The broker's configuration: one KRaft node, loopback only, explicit topics."""
    host = settings.kafka_host
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{settings.kafka_controller_port}",
        "listeners": (
            f"PLAINTEXT://{host}:{settings.kafka_port},"
            f"CONTROLLER://{host}:{settings.kafka_controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://{host}:{settings.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        # Apex creates every topic explicitly with its configs; a typo must fail.
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Transaction protocol v2 (apex.kafka.txn_v2): a Produce that meets the last
        # transaction's markers still being written is retried by the broker itself,
        # after 20 ms by default; Apex's own clients retry after APEX_KAFKA_TXN_RETRY_MS.
        "add.partitions.to.txn.retry.backoff.ms": str(settings.kafka_txn_retry_ms),
    }
    lines = ["# Written by `apex dev up` from apex.config.Settings; edits are overwritten."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID, URL-safe base64 without padding (22 chars)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka's Uuid.randomUuid avoids these too
            return text


async def kafka_answers(bootstrap: str, timeout_ms: int = 5000) -> str | None:
    """``None`` when a broker at ``bootstrap`` answers a metadata request; else why not."""
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if host and port.isdigit() and not port_in_use(host, int(port)):
        return f"nothing listens on {first}"
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # a refused probe is not an error worth a traceback
    try:
        await client.bootstrap()
        if not client.cluster.brokers():
            return "metadata has no brokers yet"
        return None
    except (KafkaError, OSError) as exc:
        return f"metadata request failed: {exc}"
    finally:
        quiet.setLevel(level)
        with contextlib.suppress(Exception):
            await client.close()
