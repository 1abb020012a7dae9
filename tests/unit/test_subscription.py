"""Subscription filters and the partition a run's results are on (no broker needed)."""

from __future__ import annotations

from datetime import datetime

import pytest
from aiokafka.partitioner import DefaultPartitioner

from apex.config import Settings
from apex.domain.messages import RunResult, StepResult
from apex.subscription import Subscription, partition_of

SETTINGS = Settings.from_env({})


def _run(run_id: str = "r1", status: str = "completed", definition: str = "triage@2") -> RunResult:
    return RunResult(
        run_id=run_id, definition=definition, status=status, outputs={}, error=None,
        started_at_ms=1, finished_at_ms=2, correlation_id="",
    )  # fmt: skip


def _step(status: str = "succeeded") -> StepResult:
    return StepResult(
        run_id="r1", definition="triage@2", step_id="a", attempt=1, status=status, output={},
        error=None, finished_at_ms=2, correlation_id="",
    )  # fmt: skip


def test_filters_combine() -> None:
    failed_triage = Subscription(SETTINGS, definition="triage", status=["failed", "cancelled"])
    only_v1 = Subscription(SETTINGS, definition="triage@1")
    runs_of_r2 = Subscription(SETTINGS, run_id="r2", kind="run")
    steps = Subscription(SETTINGS, kind="step", where=lambda r: r.run_id.startswith("r"))

    assert failed_triage.matches(_run(status="failed"))
    assert not failed_triage.matches(_run(status="completed"))
    assert not failed_triage.matches(_run(status="failed", definition="triage2@1"))
    assert not only_v1.matches(_run()) and only_v1.matches(_run(definition="triage@1"))
    assert runs_of_r2.matches(_run("r2")) and not runs_of_r2.matches(_run("r1"))
    assert steps.matches(_step()) and not steps.matches(_run())


def test_a_run_is_read_on_the_partition_kafka_puts_its_key_in() -> None:
    partitions = list(range(6))
    for run_id in ("r1", "acme:0b6f5a4e-8c1d-4c55-9a0e-1f3a5b7c9d10", "é"):
        expected = DefaultPartitioner()(run_id.encode(), partitions, partitions)
        assert partition_of(run_id, 6) == expected


def test_a_start_time_needs_a_time_zone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Subscription(SETTINGS, from_time=datetime(2024, 5, 1))
    with pytest.raises(ValueError, match="kind must be"):
        Subscription(SETTINGS, kind="runs")  # type: ignore[arg-type]
