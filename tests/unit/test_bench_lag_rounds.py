"""The projection-lag benchmark's rounds: a count reports its median round by lag p99."""

from __future__ import annotations

from typing import Any

from benchmarks.bench_projection_lag import median_round


def _round(p99_ms: float, cpu_us: float) -> dict[str, Any]:
    return {
        "lag": {"p50_ms": p99_ms / 3, "p99_ms": p99_ms},
        "events_per_s": 12_000,
        "cpu_us_per_event": cpu_us,
        "events_per_batch": 500,
    }


def test_the_median_round_is_reported_whole_with_every_rounds_figures() -> None:
    rounds = [_round(400, 50), _round(250, 44), _round(900, 61)]
    row = median_round(rounds)
    # The median round's own figures, not medians of each figure across rounds.
    assert (row["lag"]["p99_ms"], row["cpu_us_per_event"]) == (400, 50)
    assert [r["lag_p99_ms"] for r in row["rounds"]] == [400, 250, 900]
    assert [r["cpu_us_per_event"] for r in row["rounds"]] == [50, 44, 61]


def test_of_two_rounds_the_worse_is_the_median_and_one_round_is_itself() -> None:
    assert median_round([_round(300, 1), _round(200, 2)])["lag"]["p99_ms"] == 300
    assert median_round([_round(300, 1)])["lag"]["p99_ms"] == 300
