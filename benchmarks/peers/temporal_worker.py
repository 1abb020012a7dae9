"""A Temporal worker process: the benchmark workflows and the no-op ``hop`` activity.

    python -m benchmarks.peers.temporal_worker --address 127.0.0.1:17233 --task-queue Q

Runs until SIGTERM/SIGINT. SDK defaults except ``max_concurrent_activities``,
set to the same task concurrency the Apex worker gets.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from benchmarks.peers.temporal_workflows import Chain5, Fan10
from benchmarks.workload import hop


@activity.defn(name="hop")
async def hop_activity(after: list[Any]) -> Any:
    return hop(after)


async def serve(address: str, task_queue: str, activities: int) -> None:
    client = await Client.connect(address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[Chain5, Fan10],
        activities=[hop_activity],
        max_concurrent_activities=activities,
    )
    async with worker:
        print(f"temporal worker ready on {task_queue}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--max-concurrent-activities", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(serve(args.address, args.task_queue, args.max_concurrent_activities))


if __name__ == "__main__":
    main()
