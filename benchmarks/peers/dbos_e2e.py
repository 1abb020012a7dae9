"""DBOS end to end: one process is the DBOS application and its client, on PostgreSQL.

    python -m benchmarks.peers.dbos_e2e --database-url postgresql://... \
        --shape chain5 --concurrency 100 --runs 1000 --json

DBOS is a library: workflows run in the process that starts them, checkpointing
every step to its system database — here a database of its own on the same
PostgreSQL as Apex's read models (benchmarks/peers/dbos_setup.py). The same
DAGs as async workflows of async steps; the fan-out starts its eight steps in
a fixed order and gathers them, the pattern DBOS documents for running async
steps in parallel. Each invocation gets a fresh system schema, dropped at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import psutil
import sqlalchemy as sa
from dbos import DBOS, DBOSConfig

from benchmarks import procs
from benchmarks.loop import closed_loop, driver_arguments, emit, report, warm_up
from benchmarks.sampler import Sampler
from benchmarks.workload import FAN_WIDTH, SHAPES, hop


@DBOS.step()
async def hop_step(after: list[Any]) -> Any:
    return hop(after)


@DBOS.workflow()
async def chain5() -> Any:
    out = await hop_step([])
    for _ in range(4):
        out = await hop_step([out])
    return out


@DBOS.workflow()
async def fan10() -> Any:
    first = await hop_step([])
    tasks = [asyncio.create_task(hop_step([first])) for _ in range(FAN_WIDTH)]
    fanned = await asyncio.gather(*tasks)
    return await hop_step(list(fanned))


WORKFLOWS = {"chain5": chain5, "fan10": fan10}


async def run(args: Any) -> dict[str, Any]:
    shape = SHAPES[args.shape]
    schema = f"bench_{shape.name}_c{args.concurrency}_{procs.unique_suffix()}".replace("-", "_")
    config: DBOSConfig = {
        "name": "apex-bench",
        "system_database_url": args.database_url,
        "dbos_system_schema": schema,
        "log_level": "WARNING",
        "sys_db_pool_size": args.pool_size,
    }
    DBOS(config=config)
    await asyncio.to_thread(DBOS.launch)
    workflow = WORKFLOWS[shape.name]
    try:

        async def run_one() -> Any:
            handle = await DBOS.start_workflow_async(workflow)
            return await handle.get_result()

        warm = await warm_up(run_one, args)
        postmaster = _postgres_pid(args.database_url)
        sampler = Sampler({"app": os.getpid()}, {"postgres": postmaster} if postmaster else {})
        sampler.begin()
        loop = await closed_loop(
            run_one, concurrency=args.concurrency, runs=args.runs, max_seconds=args.max_seconds
        )
        usage = sampler.end()
    finally:
        await asyncio.to_thread(DBOS.destroy)
        _drop_schema(args.database_url, schema)
    return report(
        "dbos",
        shape,
        args.concurrency,
        loop,
        warmup_runs=warm.completed,
        warmup_s=round(warm.elapsed_s, 1),
        sys_db_pool_size=args.pool_size,
        processes=usage,
    )


def _postgres_pid(url: str) -> int | None:
    """The postmaster serving ``url`` (found by its port): its backends are its children."""
    port = sa.engine.make_url(url).port or 5432
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if cmdline and cmdline[0].endswith("/postgres") and f"port={port}" in cmdline:
            return int(proc.pid)
    return None


def _drop_schema(url: str, schema: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'drop schema if exists "{schema}" cascade'))
    finally:
        engine.dispose()


def main() -> None:
    parser = driver_arguments(__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="DBOS system database")
    parser.add_argument("--pool-size", type=int, default=20, help="DBOS sys_db_pool_size")
    args = parser.parse_args()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    emit(asyncio.run(run(args)), args.json)


if __name__ == "__main__":
    main()
