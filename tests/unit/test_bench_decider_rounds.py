"""The decider benchmark's rounds: each figure is the rounds' median, every round kept."""

from __future__ import annotations

from benchmarks.bench_decider import drive, median_of_rounds


def _round(commands_per_s: float, p99_us: float, max_us: float) -> dict[str, float]:
    return {"runs": 10, "commands_per_s": commands_per_s, "p99_us": p99_us, "max_us": max_us}


def test_figures_are_the_rounds_medians_and_max_the_largest() -> None:
    rounds = [_round(90_000, 40, 900), _round(60_000, 55, 30_000), _round(100_000, 38, 700)]
    figures = median_of_rounds(rounds)
    assert figures["commands_per_s"] == 90_000
    assert figures["p99_us"] == 40
    assert figures["runs"] == 10
    assert figures["max_us"] == 30_000  # the worst command of any round, not a median
    assert figures["rounds"] == rounds


def test_a_round_drives_every_run_to_completion_in_both_ways() -> None:
    for fold_by_caller in (False, True):
        result = drive(3, fold_by_caller=fold_by_caller)
        assert (result.runs, result.commands) == (3, 63)  # 21 commands a run
        assert len(result.latencies_ns) == result.commands
