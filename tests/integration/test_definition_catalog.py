"""The definition catalog (the orchestrator's and the client's) on the real broker."""

from __future__ import annotations

from dataclasses import replace

from apex import ApexClient
from apex.catalog import DefinitionCatalog
from apex.config import Settings
from tests.integration.deployment import hello


async def test_the_catalog_reads_on_demand_and_does_not_fetch_between_reads(
    apex_settings: Settings,
) -> None:
    async with ApexClient(apex_settings) as client:
        await client.register(hello("catalogued"))
        catalog = DefinitionCatalog(apex_settings)
        await catalog.start()
        try:
            consumer = catalog._consumer
            assert consumer is not None
            partitions = set(catalog._partitions)
            assert catalog.get("catalogued") == hello("catalogued")
            assert consumer.paused() == partitions  # no long polls until the next read

            second = replace(hello("catalogued"), version=2)
            await client.register(second)
            assert catalog.get("catalogued", 2) is None  # not read yet
            assert await catalog.resolve("catalogued", 2) == second  # a miss reads on
            assert catalog.get("catalogued") == second
            assert consumer.paused() == partitions
        finally:
            await catalog.stop()
