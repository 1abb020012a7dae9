"""The drivers' closed loop and warm-up: runs *and* seconds (no Kafka needed)."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from benchmarks.loop import WARMUP_SECONDS, closed_loop, driver_arguments, warm_up


async def _noop_run() -> dict[str, object]:
    await asyncio.sleep(0.005)
    return {}


def test_without_least_seconds_the_loop_starts_exactly_its_runs() -> None:
    done = asyncio.run(closed_loop(_noop_run, concurrency=1, runs=3, max_seconds=30))
    assert done.completed == 3


def test_least_seconds_keep_the_loop_going_past_its_runs() -> None:
    done = asyncio.run(
        closed_loop(_noop_run, concurrency=1, runs=2, max_seconds=30, min_seconds=0.3)
    )
    # 0.3 s of 5 ms runs is far more than 2, whatever the machine's speed.
    assert done.completed > 2
    assert done.elapsed_s >= 0.3


def test_warm_up_takes_its_runs_and_seconds_from_the_command_line() -> None:
    args = driver_arguments("test").parse_args(
        ["--shape", "chain5", "--concurrency", "1", "--runs", "1", "--warmup", "2"]
    )
    assert args.warmup_seconds == WARMUP_SECONDS, "the default every driver shares"
    args.warmup_seconds = 0.2
    warm = asyncio.run(warm_up(_noop_run, args))
    assert warm.completed > 2 and warm.elapsed_s >= 0.2


def test_a_warm_up_where_no_run_finishes_says_why() -> None:
    async def failing() -> dict[str, object]:
        raise ConnectionError("broker unreachable")

    args = argparse.Namespace(concurrency=1, warmup=2, warmup_seconds=0.0)
    with pytest.raises(RuntimeError, match=r"no warm-up run finished.*broker unreachable"):
        asyncio.run(warm_up(failing, args))
