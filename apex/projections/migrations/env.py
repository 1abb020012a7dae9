"""Alembic environment of the read models: every table in one target schema.

The target schema is the ``schema`` attribute of the Alembic config (set by
:func:`apex.projections.migrate.migrate`), else ``-x schema=NAME``, else the
``APEX_READ_MODEL_SCHEMA`` setting. Alembic's version table lives in that
schema too, so each schema — the live one and a rebuild's fresh one — carries
its own revision. Migrations read the schema from
``op.get_context().opts["version_table_schema"]``.

Given a connection (``config.attributes["connection"]``), the migration runs
on it, inside the caller's transaction; otherwise it connects to ``-x url=...``
or the settings' database with the async engine and runs in a transaction
of its own.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from apex.config import Settings
from apex.projections.schema import metadata, quote_ident

config = context.config


def _schema() -> str:
    schema = config.attributes.get("schema") or context.get_x_argument(as_dictionary=True).get(
        "schema"
    )
    if not schema:
        schema = Settings.from_env().read_model_schema
    quote_ident(schema)  # refuses anything that is not a plain identifier
    return str(schema)


def _configure(connection: Connection, schema: str) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=schema,
        transaction_per_migration=False,
    )


def _run_on(connection: Connection) -> None:
    schema = _schema()
    connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    _configure(connection, schema)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    url = (
        context.get_x_argument(as_dictionary=True).get("url") or Settings.from_env().sqlalchemy_url
    )
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run_on)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url="postgresql://",
        target_metadata=metadata,
        version_table_schema=_schema(),
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    _run_on(config.attributes["connection"])
else:
    asyncio.run(_run_online())
