"""DBOS's own database on the local PostgreSQL: ``python -m benchmarks.peers.dbos_setup``.

The Apex role cannot create databases, so the database is created (once) by the
local stack's superuser, owned by the Apex role; DBOS then creates its system
tables in it, one schema per benchmark invocation.
"""

from __future__ import annotations

import asyncio
import importlib.metadata

import asyncpg

from apex.config import Settings
from apex.devstack.postgres import SUPERUSER

DATABASE = "apex_bench_dbos"


def database_url(settings: Settings) -> str:
    s = settings
    return f"postgresql://{s.pg_user}:{s.pg_password}@{s.pg_host}:{s.pg_port}/{DATABASE}"


async def ensure_database(settings: Settings) -> str:
    """Create the database if it is missing; return DBOS's URL for it."""
    s = settings
    dsn = f"postgresql://{SUPERUSER}:{s.pg_password}@{s.pg_host}:{s.pg_port}/postgres"
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        if await conn.fetchval("select 1 from pg_database where datname = $1", DATABASE) is None:
            await conn.execute(f'create database "{DATABASE}" owner "{s.pg_user}"')
    finally:
        await conn.close()
    return database_url(settings)


def version() -> str:
    return importlib.metadata.version("dbos")


def main() -> None:
    url = asyncio.run(ensure_database(Settings.from_env()))
    print(f"DBOS {version()}: system database {url.rsplit('@', 1)[-1]}")


if __name__ == "__main__":
    main()
