"""The local stack as a whole: ``up``, ``down``, ``status``, and ``ensure_stack`` for tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from apex.config import Settings
from apex.devstack.kafka import KafkaService, kafka_answers
from apex.devstack.postgres import PostgresService, postgres_answers
from apex.devstack.process import StackError, StackLock
from apex.devstack.service import LocalService, ServiceStatus


def services(settings: Settings) -> list[LocalService]:
    """Every service of the local stack, in start order."""
    return [KafkaService(settings), PostgresService(settings)]


def service(settings: Settings, name: str) -> LocalService:
    for candidate in services(settings):
        if candidate.name == name:
            return candidate
    raise StackError(f"unknown service {name!r}; known: kafka, postgres")


async def up(settings: Settings) -> list[ServiceStatus]:
    """Start what is not running and wait until every service answers.

    Idempotent: a service that already runs is only probed. Raises
    :class:`StackError` (with the log tail) when a service cannot be made to answer.
    """
    async with _stack_lock(settings):
        results = await asyncio.gather(
            *(_bring_up(svc, settings.stack_timeout) for svc in services(settings)),
            return_exceptions=True,
        )
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for error in errors:
            if not isinstance(error, StackError):
                raise error
        raise StackError("\n\n".join(str(e) for e in errors))
    return [r for r in results if isinstance(r, ServiceStatus)]


async def down(settings: Settings, grace: float = 30.0) -> list[tuple[str, str]]:
    """Stop the services this stack started (by pid file); (name, what happened)."""
    async with _stack_lock(settings):
        outcomes = await asyncio.gather(
            *(asyncio.to_thread(svc.stop, grace) for svc in services(settings))
        )
    return [(svc.name, outcome) for svc, outcome in zip(services(settings), outcomes, strict=True)]


async def status(settings: Settings) -> list[ServiceStatus]:
    return list(await asyncio.gather(*(svc.status() for svc in services(settings))))


async def ensure_stack(settings: Settings) -> list[ServiceStatus]:
    """Make Kafka and PostgreSQL reachable for the given settings, or raise StackError.

    With ``APEX_BOOTSTRAP_SERVERS`` / ``APEX_DATABASE_URL`` set, that external
    stack must answer; nothing is started. Otherwise the local stack is used as
    it is when it answers (whoever started it, e.g. docker compose), and
    started with :func:`up` when it does not.
    """
    external = bool(settings.bootstrap_servers or settings.database_url)
    kafka_reason = await kafka_answers(settings.kafka_bootstrap)
    pg_reason, pg_version = await postgres_answers(settings.asyncpg_dsn)
    if kafka_reason is None and pg_reason is None:
        return [
            ServiceStatus("kafka", settings.kafka_bootstrap, True, "answering", state="running"),
            ServiceStatus(
                "postgres",
                _pg_where(settings),
                True,
                "answering",
                version=pg_version,
                state="running",
            ),
        ]
    if external:
        raise StackError(
            "the configured stack does not answer:\n"
            f"  Kafka {settings.kafka_bootstrap}: {kafka_reason or 'ok'}\n"
            f"  PostgreSQL {_pg_where(settings)}: {pg_reason or 'ok'}\n"
            "Unset APEX_BOOTSTRAP_SERVERS / APEX_DATABASE_URL to use the local stack."
        )
    return await up(settings)


async def _bring_up(svc: LocalService, within: float) -> ServiceStatus:
    started = time.monotonic()
    pid = svc.running_pid()
    state = "already running"
    if pid is None:
        await asyncio.to_thread(svc.prepare)
        pid = await asyncio.to_thread(svc.start)
        state = "started"
    await svc.wait_ready(pid, within)
    return ServiceStatus(
        name=svc.name,
        address=svc.address,
        answering=True,
        detail="answering",
        pid=pid,
        version=svc.version(),
        state=state,
        log_file=svc.log_file,
        seconds=round(time.monotonic() - started, 2),
    )


@contextlib.asynccontextmanager
async def _stack_lock(settings: Settings) -> AsyncIterator[None]:
    lock = StackLock(settings.home.resolve() / "run" / "devstack.lock")
    await asyncio.to_thread(lock.acquire)  # flock belongs to the file, not the thread
    try:
        yield
    finally:
        lock.release()


def _pg_where(settings: Settings) -> str:
    """Where PostgreSQL is, without the password."""
    if not settings.database_url:
        return f"{settings.pg_host}:{settings.pg_port}"
    scheme, _, rest = settings.database_url.partition("://")
    _, at, location = rest.rpartition("@")
    return f"{scheme}://…@{location}" if at else settings.database_url
