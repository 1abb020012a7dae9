"""Orchestrator memory per active run: N runs parked on an approval gate.

    python -m benchmarks.apex_memory --runs 10000 --json

A one-step workflow whose step waits for approval before dispatch, so every run
stays active in the orchestrator's state. The orchestrator process is measured
(RSS, median of five samples) once warm (after ``--warmup`` parked runs) and
again after ``--runs`` more; the difference divided by ``--runs`` is the cost
of one active run, as the operating system sees it (interpreter, allocator
and fragmentation included). "Processed" means the orchestrator's consumer
group has committed every command: its state holds them all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from aiokafka.admin import AIOKafkaAdminClient

from apex.client import ApexClient
from apex.config import Settings
from apex.domain.definitions import ApprovalGate, GateWhen, StepDefinition, WorkflowDefinition
from benchmarks import procs
from benchmarks.apex_agents import CAPABILITY
from benchmarks.apex_e2e import delete_prefixed_topics

TARGET_BYTES_PER_RUN = 2048
SEND_CHUNK = 500


def gated_definition() -> WorkflowDefinition:
    step = StepDefinition(
        "review", CAPABILITY, {"after": []}, approval=ApprovalGate(GateWhen.BEFORE)
    )
    return WorkflowDefinition(name="bench-approval", version=1, steps=(step,))


async def start_runs(client: ApexClient, name: str, count: int) -> None:
    for first in range(0, count, SEND_CHUNK):
        n = min(SEND_CHUNK, count - first)
        await asyncio.gather(
            *(client.start_run(name, {"n": first + i}, run_id=str(uuid.uuid4())) for i in range(n))
        )


async def wait_processed(settings: Settings, proc: Any, log_dir: Path, timeout_s: float) -> float:
    """Until the orchestrator group committed the end of ``apex.commands``; seconds waited."""
    group = f"{settings.topic_prefix}orchestrator"
    topic = settings.topic("commands")
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    consumer = None
    t0 = time.monotonic()
    try:
        from apex.kafka.clients import make_consumer, topic_partitions

        consumer = make_consumer(settings)
        await consumer.start()
        tps = await topic_partitions(consumer, topic)
        while True:
            procs.check_alive(proc, "orchestrator", log_dir)
            ends = await consumer.end_offsets(tps)
            committed = await admin.list_consumer_group_offsets(group)
            if all(tp in committed and committed[tp].offset >= ends[tp] for tp in tps):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                behind = {
                    tp.partition: ends[tp] - (committed[tp].offset if tp in committed else 0)
                    for tp in tps
                }
                raise TimeoutError(f"orchestrator still behind after {timeout_s:.0f} s: {behind}")
            await asyncio.sleep(0.25)
    finally:
        if consumer is not None:
            await consumer.stop()
        await admin.close()


async def rss_bytes(pid: int, samples: int = 5) -> int:
    proc = psutil.Process(pid)
    values = []
    for _ in range(samples):
        values.append(proc.memory_info().rss)
        await asyncio.sleep(0.2)
    return int(statistics.median(values))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = f"memory-{procs.unique_suffix()}"
    settings = Settings.from_env(topic_prefix=f"bench.{tag}.")
    log_dir = procs.WORK_DIR / "apex" / tag
    wf = gated_definition()
    proc = None
    try:
        async with ApexClient(settings) as client:
            await client.register(wf)
            proc = procs.spawn(
                procs.python_module("apex", "orchestrator"),
                name="orchestrator",
                log_dir=log_dir,
                env={**procs.settings_env(settings), "APEX_INSTANCE_ID": "bench-memory"},
            )
            await start_runs(client, wf.name, args.warmup)
            await wait_processed(settings, proc, log_dir, timeout_s=120)
            await asyncio.sleep(1.0)
            before = await rss_bytes(proc.pid)
            t0 = time.monotonic()
            await start_runs(client, wf.name, args.runs)
            await wait_processed(settings, proc, log_dir, timeout_s=args.timeout)
            seconds = time.monotonic() - t0
            await asyncio.sleep(1.0)
            after = await rss_bytes(proc.pid)
    finally:
        if proc is not None:
            procs.stop(proc)
        with contextlib.suppress(Exception):
            await delete_prefixed_topics(settings)
    per_run = (after - before) / args.runs
    return {
        "system": "apex",
        "active_runs": args.runs + args.warmup,
        "measured_runs": args.runs,
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "bytes_per_run": round(per_run),
        "target_bytes_per_run": TARGET_BYTES_PER_RUN,
        "start_and_park_s": round(seconds, 2),
        "runs_parked_per_s": round(args.runs / seconds, 1) if seconds else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs measured")
    parser.add_argument("--warmup", type=int, default=200, help="runs parked before measuring")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for them")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
    else:
        print(
            f"orchestrator: {figures['bytes_per_run']} bytes per active run "
            f"({figures['rss_before_mb']} -> {figures['rss_after_mb']} MB for "
            f"{figures['measured_runs']} runs)"
        )


if __name__ == "__main__":
    main()
