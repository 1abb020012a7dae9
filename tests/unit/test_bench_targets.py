"""The targets table's verdict on the hop (pure: a report dict, no stack)."""

from __future__ import annotations

from typing import Any

from benchmarks.report import _hop_latency


def _report(*cells: tuple[int, float, float]) -> dict[str, Any]:
    scenarios = {
        f"e2e.chain5.c{c}": {
            "kind": "e2e",
            "shape": "chain5",
            "concurrency": c,
            "systems": {"apex": {"status": "ok", "step_to_step": {"p50_ms": p50, "p99_ms": p99}}},
        }
        for c, p50, p99 in cells
    }
    return {"scenarios": scenarios}


def test_the_hop_is_judged_at_the_fewest_runs_in_flight_and_every_cell_is_shown() -> None:
    text, met = _hop_latency(_report((1000, 89.0, 207.8), (1, 3.7, 7.7), (100, 30.4, 56.0)))
    assert met is True
    assert text.startswith("p50 / p99 ms, chain5 — c=1: 3.7 / 7.7; c=100: 30.4 / 56.0;")
    assert "c=1000: 89.0 / 207.8" in text and "judged at c=1" in text


def test_a_slow_path_misses_whatever_the_loaded_cells_show() -> None:
    assert _hop_latency(_report((1, 5.2, 7.7), (100, 4.0, 20.0)))[1] is False
    assert _hop_latency(_report((1, 3.0, 25.0)))[1] is False


def test_no_chain5_cell_is_not_run() -> None:
    assert _hop_latency({"scenarios": {}}) == ("not run", None)
