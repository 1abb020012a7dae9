"""Bring a read-model schema to the newest Alembic revision, from async code.

    await migrate(engine, "apex_rm")

Alembic's commands are synchronous; the async engine hands them a sync
connection through ``run_sync`` (Alembic's "connection sharing" recipe), so the
migration runs in the caller's transaction and on the caller's event loop. The
``alembic`` CLI works too: ``alembic -c apex/projections/alembic.ini -x
schema=NAME upgrade head``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from apex.projections.schema import quote_ident

__all__ = ["ALEMBIC_INI", "alembic_config", "current_revision", "head_revision", "migrate"]

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"


def alembic_config(schema: str) -> Config:
    """The Alembic config of the read models, targeting ``schema``."""
    quote_ident(schema)
    config = Config(str(ALEMBIC_INI))
    config.attributes["schema"] = schema
    return config


async def migrate(target: AsyncEngine | AsyncConnection, schema: str) -> str:
    """Create ``schema`` if needed and upgrade it to head; returns the revision reached."""
    if isinstance(target, AsyncEngine):
        async with target.begin() as connection:
            return await connection.run_sync(_upgrade, schema)
    return await target.run_sync(_upgrade, schema)


async def current_revision(target: AsyncEngine, schema: str) -> str | None:
    """The revision ``schema`` is at; ``None`` when it was never migrated."""
    async with target.connect() as connection:
        return await connection.run_sync(_current, schema)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("apex_rm")).get_current_head()
    assert head is not None, "the read-model migrations have no head revision"
    return head


def _upgrade(connection: Connection, schema: str) -> str:
    config = alembic_config(schema)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    return _current(connection, schema) or ""


def _current(connection: Connection, schema: str) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table_schema": schema})
    return context.get_current_revision()
