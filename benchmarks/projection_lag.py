"""Projection lag, probed from outside while the projector runs under load.

Every ``sample_s`` the probe notes the end of ``apex.events`` (per partition,
read_committed: what a projector can see); every ``poll_s`` it reads the
projector's checkpoints from PostgreSQL. A noted end is *applied* once every
partition's checkpoint reached it; its lag is the time from noting to
applying. That is the lag of the newest event at the moment it was noted, to
within ``poll_s`` (an over-estimate) — no hook inside the projector.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg

from apex.config import Settings
from apex.kafka.clients import make_consumer, topic_partitions


class LagProbe:
    def __init__(
        self, settings: Settings, schema: str, *, sample_s: float = 0.05, poll_s: float = 0.02
    ) -> None:
        self._settings = settings
        self._schema = schema
        self._sample_s = sample_s
        self._poll_s = poll_s
        self.lags: list[float] = []
        self.unapplied = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._probe())

    async def settle(self, timeout_s: float = 60.0) -> None:
        """Wait until the projector caught up with the log once (start-up, group join); reset."""
        deadline = time.monotonic() + timeout_s
        while not self.lags and time.monotonic() < deadline:
            if self._task is not None and self._task.done():
                await self._task  # the probe failed: say why
            await asyncio.sleep(0.05)
        self.lags.clear()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _probe(self) -> None:
        topic = self._settings.topic("events")
        consumer = make_consumer(self._settings)
        await consumer.start()
        conn = await asyncpg.connect(self._settings.asyncpg_dsn)
        pending: list[tuple[float, dict[int, int]]] = []
        query = (
            f'select partition, next_offset from "{self._schema}".projection_checkpoints '
            "where topic = $1"
        )
        try:
            tps = await topic_partitions(consumer, topic)
            next_sample = 0.0
            while True:
                now = time.monotonic()
                if now >= next_sample:
                    ends = await consumer.end_offsets(tps)
                    pending.append((now, {tp.partition: offset for tp, offset in ends.items()}))
                    next_sample = now + self._sample_s
                rows = await conn.fetch(query, topic)
                checkpoint = {row["partition"]: row["next_offset"] for row in rows}
                applied_at = time.monotonic()
                while pending and all(
                    checkpoint.get(p, 0) >= end or end == 0 for p, end in pending[0][1].items()
                ):
                    noted, _ = pending.pop(0)
                    self.lags.append(applied_at - noted)
                self.unapplied = len(pending)
                await asyncio.sleep(self._poll_s)
        finally:
            await consumer.stop()
            await conn.close()

    def figures(self) -> dict[str, Any]:
        from benchmarks.stats import latency_summary_ms

        return {
            **latency_summary_ms(self.lags),
            "sample_every_ms": self._sample_s * 1000,
            "checkpoint_poll_ms": self._poll_s * 1000,
            "unapplied_at_end": self.unapplied,
        }
