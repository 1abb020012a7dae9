"""Run ``apex`` with candidate optimisations patched in, to A/B them without editing the product.

    BENCH_PATCHES=partition,nostarted python -m benchmarks.apex_e2e \\
        --shape chain5 --concurrency 1000 --runs 5000 \\
        --service-wrapper benchmarks/ab_wrapper.py

The services (``orchestrator``, ``worker``) then start as
``python benchmarks/ab_wrapper.py orchestrator ...``: the patches named in
``BENCH_PATCHES`` are applied, then ``apex.cli.main`` runs with the same
arguments. A measurement tool only — the patches skip what a product change
would keep (rebalance safety, errors surfaced properly):

- ``backoff``: aiokafka's retry after CONCURRENT_TRANSACTIONS on
  AddPartitionsToTxn (``BACKOFF_OVERRIDE``, KAFKA-5477) from 20 ms to 2 ms;
- ``partition``: each producer memoises the partition of a (topic, key), so the
  pure-Python murmur2 runs once per run id instead of once per record;
- ``concurrent``: the orchestrator's per-partition transactions overlap (at most
  two batches in flight per partition, in order) instead of running one after
  another;
- ``nostarted``: the worker does not report ``ReportTaskStarted`` (for no-op
  agents: the decider accepts ``Succeeded`` for a dispatched attempt).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PATCHES = frozenset(filter(None, os.environ.get("BENCH_PATCHES", "").split(",")))


def _backoff() -> None:
    import aiokafka.producer.sender as sender

    sender.BACKOFF_OVERRIDE = 0.002


def _partition() -> None:
    from aiokafka import AIOKafkaProducer

    original = AIOKafkaProducer._partition

    def memoised(self: Any, topic: str, partition: Any, key: Any, value: Any, *raw: Any) -> Any:
        serialized_key = raw[0]
        if partition is not None or serialized_key is None:
            return original(self, topic, partition, key, value, *raw)
        cache = self.__dict__.setdefault("_bench_partitions", {})
        found = cache.get((topic, serialized_key))
        if found is None:
            found = original(self, topic, partition, key, value, *raw)
            if len(cache) > 200_000:
                cache.clear()
            cache[(topic, serialized_key)] = found
        return found

    AIOKafkaProducer._partition = memoised


def _concurrent() -> None:
    from streams.orchestrator import Orchestrator

    original = Orchestrator._process

    async def overlapping(self: Any, part: Any, records: Any) -> None:
        previous = getattr(part, "_bench_tail", None)

        async def in_order() -> None:
            if previous is not None:
                await previous
            await original(self, part, records)

        task = asyncio.ensure_future(in_order())
        task.add_done_callback(_exit_on_failure)
        part._bench_tail = task
        if previous is not None and not previous.done():
            await previous  # at most two batches in flight per partition

    Orchestrator._process = overlapping  # type: ignore[method-assign]


def _exit_on_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        print(f"ab_wrapper: transaction failed: {task.exception()!r}", file=sys.stderr)
        os._exit(3)


def _nostarted() -> None:
    from apex.worker.execution import TaskRun

    async def run(self: Any) -> None:
        self._alive_at = asyncio.get_running_loop().time()
        self.started_at = time.time()
        outcome = await self._run_agent()
        self.finished_at = time.time()
        await (await self._send_outcome(outcome))

    TaskRun.run = run  # type: ignore[method-assign]


_APPLY = {
    "backoff": _backoff,
    "partition": _partition,
    "concurrent": _concurrent,
    "nostarted": _nostarted,
}


def main() -> None:
    unknown = PATCHES - set(_APPLY)
    if unknown:
        raise SystemExit(f"BENCH_PATCHES: unknown {sorted(unknown)}; known: {sorted(_APPLY)}")
    for name in sorted(PATCHES):
        _APPLY[name]()
    sys.argv = ["apex", *sys.argv[1:]]
    from apex.cli import main as apex_main

    apex_main()


if __name__ == "__main__":
    main()
