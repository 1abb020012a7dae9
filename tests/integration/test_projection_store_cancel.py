"""A projection transaction cancelled at any point never leaves its pooled
connection inside a transaction (the next ``transaction()`` would refuse it)."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from apex.projections.migrate import migrate
from apex.projections.store import StatementProjectionStore

TOPIC = "t.events"


async def test_a_transaction_cancelled_anywhere_returns_a_clean_connection(
    async_engine: AsyncEngine, pg_schema: str
) -> None:
    await migrate(async_engine, pg_schema)
    # One pooled connection: every attempt gets the one the last attempt returned.
    engine = create_async_engine(async_engine.url, pool_size=1, max_overflow=0)
    store = StatementProjectionStore(engine, pg_schema)
    try:
        hit = 0
        for turns in range(40):  # cancel after 0, 1, 2, … turns of the loop: BEGIN among them

            async def hold() -> None:
                async with store.transaction() as unit:
                    await unit.lock_checkpoint(TOPIC, 0)
                    await asyncio.sleep(5)

            task = asyncio.create_task(hold())
            for _ in range(turns):
                await asyncio.sleep(0)
            hit += not task.done()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            async with engine.connect() as connection:
                driver = (await connection.get_raw_connection()).driver_connection
                assert driver is not None
                assert not driver.is_in_transaction(), f"left in a transaction after {turns} turns"
        assert hit > 0
        async with store.transaction() as unit:  # and the store still works
            assert await unit.lock_checkpoint(TOPIC, 0) == 0
    finally:
        await engine.dispose()
