"""Every Apex setting, in one place.

Each setting has an environment variable (``APEX_`` prefix), a default and one
line of documentation, the way faust documents its settings. ``Settings.from_env``
reads them once; everything else takes a ``Settings`` instance. The README's
settings table is generated from this module (``apex dev settings``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def _setting(env: str, default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Typed settings; build with :meth:`from_env` or override fields in tests."""

    # -- local stack -------------------------------------------------------------
    home: Path = _setting(
        "APEX_HOME", REPO_ROOT / "var", "Folder for the local stack's data, logs and pid files."
    )
    kafka_version: str = _setting(
        "APEX_KAFKA_VERSION", "4.1.1", "Apache Kafka version the local stack resolves from Maven."
    )
    kafka_host: str = _setting("APEX_KAFKA_HOST", "127.0.0.1", "Address Kafka listens on.")
    kafka_port: int = _setting("APEX_KAFKA_PORT", 19092, "Kafka broker (client) port.")
    kafka_controller_port: int = _setting(
        "APEX_KAFKA_CONTROLLER_PORT", 19093, "Kafka KRaft controller port."
    )
    kafka_heap: str = _setting("APEX_KAFKA_HEAP", "1g", "Maximum Java heap of the local broker.")
    pg_host: str = _setting("APEX_PG_HOST", "127.0.0.1", "Address PostgreSQL listens on.")
    pg_port: int = _setting("APEX_PG_PORT", 15432, "PostgreSQL port.")
    pg_user: str = _setting("APEX_PG_USER", "apex", "PostgreSQL role Apex connects as.")
    pg_password: str = _setting("APEX_PG_PASSWORD", "apex", "Password of that role.")
    pg_database: str = _setting(
        "APEX_PG_DATABASE", "apex", "PostgreSQL database of the read models."
    )
    pg_os_user: str = _setting(
        "APEX_PG_OS_USER",
        "embedded_postgres",
        "OS user the local PostgreSQL runs as when Apex runs as root (created if missing).",
    )
    java: str = _setting("APEX_JAVA", "java", "Java (17+) executable that runs the local broker.")
    maven: str = _setting("APEX_MAVEN", "mvn", "Maven executable that resolves the Kafka jars.")
    stack_timeout: float = _setting(
        "APEX_STACK_TIMEOUT", 90.0, "Seconds `apex dev up` waits for a service to answer."
    )

    # -- Kafka topology ------------------------------------------------------------
    bootstrap_servers: str = _setting(
        "APEX_BOOTSTRAP_SERVERS", "", "Kafka bootstrap servers; empty means the local stack."
    )
    topic_prefix: str = _setting("APEX_TOPIC_PREFIX", "apex.", "Prefix of every Apex topic.")
    partitions: int = _setting("APEX_PARTITIONS", 6, "Partitions of apex.commands/events/tasks.")
    replication_factor: int = _setting(
        "APEX_REPLICATION_FACTOR", 1, "Replication factor of created topics."
    )

    linger_ms: int = _setting(
        "APEX_LINGER_MS",
        0,
        "Producer linger: how long a batch waits for more records. 0 sends each at once; "
        "records sent while a request is in flight still share the next one.",
    )
    event_loop: str = _setting(
        "APEX_EVENT_LOOP",
        "uvloop",
        "Event loop of the services and workers: uvloop (in C; less CPU and a shorter hop at "
        "low load) or asyncio (the standard library's).",
    )
    max_record_bytes: int = _setting(
        "APEX_MAX_RECORD_BYTES",
        1_000_000,
        "Largest record Apex writes (value, key and headers, as Kafka counts them); keep it at "
        "most the broker's message.max.bytes (1,048,588 by default). A command whose decision "
        "would write a larger one goes to the DLQ; a task whose report would is failed.",
    )
    fetch_max_wait_ms: int = _setting(
        "APEX_FETCH_MAX_WAIT_MS",
        200,
        "How long the broker holds a consumer's fetch when there is nothing to read. A fetch "
        "comes back as soon as records arrive, so this is how often an idle consumer asks "
        "again, and the longest a partition resumed or re-read waits behind a fetch in flight.",
    )
    kafka_txn_retry_ms: int = _setting(
        "APEX_KAFKA_TXN_RETRY_MS",
        2,
        "Retry after CONCURRENT_TRANSACTIONS (the last transaction's markers still being "
        "written); aiokafka's own is 20 ms.",
    )
    kafka_txn_protocol: str = _setting(
        "APEX_KAFKA_TXN_PROTOCOL",
        "auto",
        "Kafka transaction protocol of Apex's transactional producers: auto (v2, KIP-890, when "
        "the broker finalised transaction.version >= 2: no AddPartitionsToTxn round trip; "
        "else v1) or v1.",
    )
    session_timeout_ms: int = _setting(
        "APEX_SESSION_TIMEOUT_MS", 10_000, "Consumer group session timeout (failover time)."
    )
    orchestrator_batch: int = _setting(
        "APEX_ORCHESTRATOR_BATCH", 500, "Most commands the orchestrator decides in one transaction."
    )
    orchestrator_group: str = _setting(
        "APEX_ORCHESTRATOR_GROUP", "apex-orchestrator", "Consumer group of orchestrator processes."
    )
    instance_id: str = _setting(
        "APEX_INSTANCE_ID", "", "Name of this process in logs and worker ids; empty: host-pid."
    )

    # -- PostgreSQL --------------------------------------------------------------
    database_url: str = _setting(
        "APEX_DATABASE_URL", "", "SQLAlchemy URL of the read models; empty means the local stack."
    )

    # -- agent workers -----------------------------------------------------------
    worker_concurrency: int = _setting(
        "APEX_WORKER_CONCURRENCY",
        8,
        "Tasks a worker runs at once per capability, unless the agent sets its own limit. "
        "A worker also holds up to as many dispatches again, fetched in order, to start the "
        "moment a slot frees; they are not committed until done, so a worker that stops or "
        "loses the partition leaves them to be delivered again.",
    )
    worker_grace_s: float = _setting(
        "APEX_WORKER_GRACE_S",
        30.0,
        "Seconds a stopping worker lets in-flight tasks finish; the rest are redelivered.",
    )
    worker_heartbeat_s: float = _setting(
        "APEX_WORKER_HEARTBEAT_S",
        0.0,
        "Seconds between a running task's heartbeats; 0: a third of its timeout (none without).",
    )
    worker_started_after_ms: int = _setting(
        "APEX_WORKER_STARTED_AFTER_MS",
        100,
        "A task still running after this many ms is reported started; quicker ones report "
        "only their outcome (0: report every start at once).",
    )
    worker_linger_ms: int = _setting(
        "APEX_WORKER_LINGER_MS",
        0,
        "Linger of a worker's reports: 0 sends each at once (reports of concurrent tasks "
        "still share a request while one is in flight); APEX_LINGER_MS is everyone else's.",
    )
    worker_commit_interval_s: float = _setting(
        "APEX_WORKER_COMMIT_INTERVAL_S",
        1.0,
        "How often a worker commits the offsets of tasks whose reports Kafka acknowledged.",
    )

    # -- trigger rules -----------------------------------------------------------
    triggers_start: str = _setting(
        "APEX_TRIGGERS_START",
        "latest",
        "Where trigger rules first read an upstream topic: latest (new events) or earliest.",
    )

    # -- read models and audit ---------------------------------------------------
    read_model_schema: str = _setting(
        "APEX_READ_MODEL_SCHEMA",
        "apex_rm",
        "PostgreSQL schema of the read models; a rebuild swaps a fresh one in under this name.",
    )
    projector_batch: int = _setting(
        "APEX_PROJECTOR_BATCH",
        5000,
        "Most events the projector applies in one PostgreSQL transaction (per partition).",
    )
    audit_seek_gap: int = _setting(
        "APEX_AUDIT_SEEK_GAP",
        500,
        "Reading one run's events: other records read through (not seeked over) between two.",
    )
    rebuild_workers: int = _setting(
        "APEX_REBUILD_WORKERS",
        0,
        "Processes a read-model rebuild folds partitions in; 0: one per core for big logs.",
    )

    # -- telemetry ---------------------------------------------------------------
    otel_exporter: str = _setting(
        "APEX_OTEL_EXPORTER",
        "none",
        "Where spans go: none, otlp (APEX_OTLP_ENDPOINT), console, file (APEX_OTEL_FILE), "
        "memory (tests).",
    )
    otlp_endpoint: str = _setting(
        "APEX_OTLP_ENDPOINT",
        "http://127.0.0.1:4318",
        "OTLP/HTTP endpoint of the collector; spans are posted to <endpoint>/v1/traces.",
    )
    otel_file: str = _setting(
        "APEX_OTEL_FILE",
        "",
        "JSON-lines span file of APEX_OTEL_EXPORTER=file; empty: APEX_HOME/spans/<service>.jsonl.",
    )
    otel_sample_ratio: float = _setting(
        "APEX_OTEL_SAMPLE_RATIO",
        1.0,
        "Share of new traces recorded; every hop of a run follows its first span's decision.",
    )
    service_name: str = _setting(
        "APEX_SERVICE_NAME",
        "",
        "service.name of this process's spans and metrics; empty: apex-<process> "
        "(apex-orchestrator, apex-worker, ...).",
    )
    metrics_port: int = _setting(
        "APEX_METRICS_PORT", 0, "Port serving Prometheus metrics at /metrics; 0: no metrics."
    )
    metrics_host: str = _setting(
        "APEX_METRICS_HOST", "127.0.0.1", "Address the metrics port listens on."
    )
    log_format: str = _setting(
        "APEX_LOG_FORMAT",
        "text",
        "Log lines of Apex processes: text or json (one object a line); both carry trace, run ids.",
    )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        return cls(**env_values(cls, environ, overrides))

    def to_env(self) -> dict[str, str]:
        """The ``APEX_*`` variable of every setting: a process started with them has
        exactly these settings, whatever its own environment says."""
        return {f.metadata["env"]: str(getattr(self, f.name)) for f in fields(self)}

    @property
    def kafka_bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.kafka_host}:{self.kafka_port}"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return (
            f"postgresql+asyncpg://{self.pg_user}:{self.pg_password}"
            f"@{self.pg_host}:{self.pg_port}/{self.pg_database}"
        )

    @property
    def asyncpg_dsn(self) -> str:
        return self.sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)

    def topic(self, name: str) -> str:
        """Full topic name: ``topic("events")`` is ``apex.events`` by default."""
        return f"{self.topic_prefix}{name}"


def env_values(
    settings_class: type, environ: dict[str, str] | None, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Field values of a settings dataclass from ``APEX_*`` variables, then ``overrides``."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(settings_class):
        name = f.metadata["env"]
        if name in env:
            values[f.name] = _parse(env[name], f.default, name)
    values.update(overrides)
    return values


def _parse(raw: str, default: Any, env_name: str) -> Any:
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw).expanduser()
    except ValueError as exc:
        raise ValueError(f"{env_name}={raw!r}: expected {type(default).__name__}") from exc
    return raw


def settings_table() -> list[tuple[str, str, str]]:
    """(env name, default, doc) for every setting — the README's table."""
    rows = []
    for f in fields(Settings):
        default = f.default
        if isinstance(default, Path):
            with contextlib.suppress(ValueError):  # outside the repo: shown as is
                default = default.relative_to(REPO_ROOT)
        rows.append((f.metadata["env"], str(default), f.metadata["doc"]))
    return rows


def settings_markdown() -> str:
    """The settings table as Markdown, exactly as the README holds it."""
    lines = ["| Variable | Default | What it does |", "|---|---|---|"]
    for env, default, doc in settings_table():
        shown = f"`{default}`" if default else "(empty)"
        lines.append(f"| `{env}` | {shown} | {doc} |")
    return "\n".join(lines) + "\n"
