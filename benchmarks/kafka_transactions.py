"""What one Kafka transaction costs the orchestrator's hop: time, retries, broker CPU.

    python -m benchmarks.kafka_transactions [--transactions 200] [--gap-ms 0]

One transactional producer (as the orchestrator has per partition) runs
``--transactions`` one-record transactions, each with its consumed offset sent
to the transaction, back to back or ``--gap-ms`` apart. Printed: each phase's
median and p90, how often AddPartitionsToTxn was answered CONCURRENT_TRANSACTIONS
and retried after aiokafka's fixed ``BACKOFF_OVERRIDE`` (the previous
transaction's markers still being written), and the broker's CPU per
transaction. On the dev stack, back to back: most transactions retry once and
take ~27 ms; 30 ms apart: none retry and each takes ~7 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from typing import Any

import aiokafka.producer.sender as sender
import psutil
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from apex.config import Settings
from benchmarks.apex_e2e import _broker_pid
from benchmarks.stats import percentile

_retries: list[float] = []


def _count_retries() -> None:
    original = sender.AddPartitionsToTxnHandler.handle_response

    def handle_response(self: Any, response: Any) -> Any:
        backoff = original(self, response)
        if backoff is not None:
            _retries.append(backoff)
        return backoff

    sender.AddPartitionsToTxnHandler.handle_response = handle_response


async def run(transactions: int, gap_s: float, offsets: bool = True) -> None:
    settings = Settings.from_env()
    topic = f"bench.txn.{uuid.uuid4().hex[:8]}"
    group = f"{topic}.group"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, settings.replication_factor)])
    await asyncio.sleep(1)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        transactional_id=topic,
        enable_idempotence=True,
        acks="all",
        linger_ms=settings.linger_ms,
    )
    await producer.start()
    broker_pid = _broker_pid(settings)
    broker = psutil.Process(broker_pid) if broker_pid else None
    phases: dict[str, list[float]] = {"produce": [], "offsets": [], "commit": [], "total": []}
    try:
        cpu0 = _cpu(broker)
        wall0 = time.perf_counter()
        for n in range(transactions):
            t0 = time.perf_counter()
            await producer.begin_transaction()
            await (await producer.send(topic, b"x" * 200, key=b"run"))
            t1 = time.perf_counter()
            if offsets:
                await producer.send_offsets_to_transaction({TopicPartition(topic, 0): n + 1}, group)
            t2 = time.perf_counter()
            await producer.commit_transaction()
            t3 = time.perf_counter()
            for name, seconds in (("produce", t1 - t0), ("offsets", t2 - t1),
                                  ("commit", t3 - t2), ("total", t3 - t0)):  # fmt: skip
                phases[name].append(seconds)
            if gap_s:
                await asyncio.sleep(gap_s)
        wall = time.perf_counter() - wall0
        broker_cpu = _cpu(broker) - cpu0
    finally:
        await producer.stop()
        with contextlib.suppress(Exception):
            await admin.delete_topics([topic])
        await admin.close()
    for name, values in phases.items():
        print(
            f"{name:8s} p50 {percentile(values, 50) * 1e3:6.1f} ms   "
            f"p90 {percentile(values, 90) * 1e3:6.1f} ms"
        )
    print(
        f"AddPartitionsToTxn retried {len(_retries)} times in {transactions} transactions "
        f"(backoff {sorted(set(_retries))} s)"
    )
    if broker is not None:
        print(
            f"broker: {broker_cpu / wall:.2f} cores, "
            f"{1000 * broker_cpu / transactions:.1f} ms CPU per transaction"
        )


def _cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    times = proc.cpu_times()
    return float(times.user + times.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=0.0, help="pause between transactions")
    parser.add_argument(
        "--no-offsets",
        action="store_true",
        help="no consumed offset in the transaction (as when it rides in a record header)",
    )
    args = parser.parse_args()
    _count_retries()
    asyncio.run(run(args.transactions, args.gap_ms / 1000, offsets=not args.no_offsets))


if __name__ == "__main__":
    main()
