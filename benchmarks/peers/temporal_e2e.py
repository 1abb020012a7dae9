"""Temporal end to end: the dev server (already running), one worker process, this client.

    python -m benchmarks.peers.temporal_e2e --address 127.0.0.1:17233 \
        --shape chain5 --concurrency 100 --runs 1000 --json

The same DAGs as Apex (benchmarks/peers/temporal_workflows.py), the same
no-op step, the same closed loop (benchmarks/loop.py). Each invocation uses a
task queue of its own and a fresh worker process, stopped at the end.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import Client

from benchmarks import procs
from benchmarks.loop import closed_loop, driver_arguments, emit, report, warm_up
from benchmarks.peers.temporal_workflows import WORKFLOWS
from benchmarks.sampler import Sampler
from benchmarks.workload import SHAPES


async def run(args: Any) -> dict[str, Any]:
    shape = SHAPES[args.shape]
    tag = f"{shape.name}-c{args.concurrency}-{procs.unique_suffix()}"
    task_queue = f"bench-{tag}"
    log_dir = Path(args.log_dir) if args.log_dir else procs.WORK_DIR / "temporal" / tag
    worker = procs.spawn(
        procs.python_module(
            "benchmarks.peers.temporal_worker",
            "--address",
            args.address,
            "--task-queue",
            task_queue,
            "--max-concurrent-activities",
            str(args.worker_concurrency),
        ),
        name="worker",
        log_dir=log_dir,
        env={"PYTHONUNBUFFERED": "1"},
    )
    try:
        client = await Client.connect(args.address)
        workflow = WORKFLOWS[shape.name]

        async def run_one() -> Any:
            procs.check_alive(worker, "worker", log_dir)
            return await client.execute_workflow(
                workflow.run, id=f"{task_queue}-{uuid.uuid4()}", task_queue=task_queue
            )

        warm = await warm_up(run_one, args)
        pids = {"worker": worker.pid}
        if args.server_pid:
            pids["server"] = args.server_pid
        sampler = Sampler(pids)
        sampler.begin()
        loop = await closed_loop(
            run_one, concurrency=args.concurrency, runs=args.runs, max_seconds=args.max_seconds
        )
        usage = sampler.end()
    finally:
        procs.stop(worker)
    return report(
        "temporal",
        shape,
        args.concurrency,
        loop,
        warmup_runs=warm.completed,
        warmup_s=round(warm.elapsed_s, 1),
        worker_concurrency=args.worker_concurrency,
        processes=usage,
    )


def main() -> None:
    parser = driver_arguments(__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the dev server's frontend host:port")
    parser.add_argument("--server-pid", type=int, default=0, help="to sample its CPU time")
    parser.add_argument("--log-dir", default="")
    args = parser.parse_args()
    emit(asyncio.run(run(args)), args.json)


if __name__ == "__main__":
    main()
