"""A cell measured in repeats: the systems take turns, and each figure is the repeats' median."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import harness
from benchmarks.harness import Level, Options, Peers, Scenario


def _figures(steps_per_s: float, p50_ms: float, runs: int = 100, **extra: Any) -> dict[str, Any]:
    return {
        "status": "ok",
        "steps_per_s": steps_per_s,
        "runs_per_s": steps_per_s / 5,
        "cpu_ms_per_step": steps_per_s / 10,
        "runs_completed": runs,
        "runs_failed": 0,
        "steps_completed": runs * 5,
        "step_to_step": {"count": runs * 4, "p50_ms": p50_ms, "p99_ms": p50_ms * 3},
        "run_latency": {"count": runs, "p50_ms": p50_ms * 5, "p99_ms": p50_ms * 10},
        "processes": {"orchestrator": {"cpu_s": steps_per_s, "rss_mb": 80.0}},
        **extra,
    }


def test_one_repeat_is_reported_as_it_is() -> None:
    one = _figures(100.0, 6.0)
    assert harness._aggregate([one]) is one


def test_each_figure_is_the_median_of_the_repeats_and_the_runs_add_up() -> None:
    repeats = [_figures(100.0, 7.0), _figures(120.0, 6.0, runs=90), _figures(80.0, 9.0)]
    merged = harness._aggregate(repeats)
    assert merged["status"] == "ok"
    assert merged["steps_per_s"] == 100.0
    assert merged["cpu_ms_per_step"] == 10.0
    assert merged["step_to_step"]["p50_ms"] == 7.0
    assert merged["step_to_step"]["p99_ms"] == 21.0
    assert merged["run_latency"]["p99_ms"] == 70.0
    assert merged["processes"]["orchestrator"]["cpu_s"] == 100.0
    assert merged["runs_completed"] == 290
    assert merged["steps_completed"] == 1450
    assert merged["step_to_step"]["count"] == 1160
    assert merged["repeats"] == repeats


def test_a_failed_repeat_fails_the_cell_with_its_reason() -> None:
    failed = {"status": "failed", "reason": "driver exited with code 1"}
    merged = harness._aggregate([_figures(100.0, 7.0), failed, _figures(90.0, 8.0)])
    assert merged["status"] == "failed"
    assert merged["reason"] == "driver exited with code 1"
    assert len(merged["repeats"]) == 3


@pytest.mark.parametrize(
    ("repeat", "expected"),
    [
        (
            None,  # the level's own: 3
            [
                ["apex", "temporal", "dbos"],
                ["temporal", "dbos", "apex"],
                ["dbos", "apex", "temporal"],
            ],
        ),
        (1, [["apex", "temporal", "dbos"]]),
    ],
)
def test_the_systems_take_turns_and_each_turn_starts_with_another(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    repeat: int | None,
    expected: list[list[str]],
) -> None:
    calls: list[str] = []
    speed = {"apex": 300.0, "temporal": 10.0, "dbos": 100.0}

    def driver(args: list[str], timeout: float, log_dir: Path, system: str) -> dict[str, Any]:
        calls.append(system)
        return _figures(speed[system] + len(calls), 5.0)

    monkeypatch.setattr(harness, "_driver", driver)
    peers = Peers(
        temporal_address="127.0.0.1:1",
        temporal_pid=1,
        dbos_url="postgresql://127.0.0.1:1/dbos",
        status={"temporal": {"status": "ok"}, "dbos": {"status": "ok"}},
    )
    scenario = Scenario(
        "e2e.chain5.c1", "e2e", "chain", shape="chain5", level=Level(1, 10, 5, repeats=3)
    )
    entry = harness._e2e(scenario, Options(repeat=repeat), peers, tmp_path, {}, lambda _: None)

    per_turn = len(speed)
    assert [calls[i : i + per_turn] for i in range(0, len(calls), per_turn)] == expected
    assert set(entry["systems"]) == {"apex", "temporal", "dbos"}
    assert all(len(fig.get("repeats", [fig])) == len(expected) for fig in entry["systems"].values())
    assert entry["ratios"]["dbos"]["throughput_x"] is not None
