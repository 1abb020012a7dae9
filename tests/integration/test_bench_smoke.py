"""``apex bench --quick``, Apex alone: the harness runs end to end and writes well-formed JSON.

A smoke check of the harness only: no figure is compared with anything (the
benchmarks are measured by ``apex bench``, never asserted in the test suite).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from apex.config import REPO_ROOT


def test_quick_bench_writes_a_well_formed_report(tmp_path: Path) -> None:
    markdown = tmp_path / "RESULTS.md"
    only = ("e2e.chain5.c1", "e2e.fan10.c1", "memory")
    argv = [
        *(sys.executable, "-m", "apex", "bench", "--quick", "--no-peers", "--json", "--profile"),
        *(f"--only={pattern}" for pattern in only),
        "--memory-runs=200",
        f"--results-dir={tmp_path}",
        f"--markdown={markdown}",
    ]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    [written] = list(tmp_path.glob("*-quick.json"))
    report = json.loads(written.read_text())
    assert report == json.loads(done.stdout)  # --json prints what it writes
    assert report["quick"] is True
    assert report["peers"] == {}
    assert {"cores", "memory_gb", "cpu_model", "host"} <= set(report["machine"])
    assert {"python", "kafka", "aiokafka", "postgresql"} <= set(report["versions"])
    assert set(report["scenarios"]) == {"e2e.chain5.c1", "e2e.fan10.c1", "memory"}

    for name, shape, steps in (("e2e.chain5.c1", "chain5", 5), ("e2e.fan10.c1", "fan10", 10)):
        cell = report["scenarios"][name]
        assert cell["status"] == "ok", cell
        apex = cell["systems"]["apex"]
        assert apex["status"] == "ok" and apex["shape"] == shape
        assert apex["runs_completed"] > 0 and apex["runs_failed"] == 0
        assert apex["steps_completed"] == apex["runs_completed"] * steps
        hops_per_run = steps - 1
        assert apex["step_to_step"]["count"] == apex["runs_completed"] * hops_per_run
        assert {"p50_ms", "p95_ms", "p99_ms"} <= set(apex["step_to_step"])
        assert cell["ratios"] == {}  # no peers, nothing to compare with

    memory = report["scenarios"]["memory"]
    assert memory["status"] == "ok", memory
    assert memory["data"]["measured_runs"] == 200
    assert isinstance(memory["data"]["bytes_per_run"], int)

    # --profile: the hop cell's extra run with its requests timed, cut into segments.
    breakdown = report["hop_breakdown"]
    assert breakdown["scenario"] == "e2e.chain5.c1" and breakdown["hops"] > 0, breakdown
    assert breakdown["segments"][-1]["segment"] == "hop"

    text = markdown.read_text()
    assert "## Where a hop's time goes (e2e.chain5.c1" in text
    assert "## Targets (DESIGN.md)" in text and "`e2e.chain5.c1`" in text
    assert "<!-- analysis:start -->" in text
