"""A run of some scenarios never replaces the day's full run, which RESULTS.md names."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from benchmarks.harness import Options, results_path

STAMP = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
REPORT = {"machine": {"host": "vm"}}


def test_each_kind_of_run_has_a_file_of_its_own(tmp_path: Path) -> None:
    def name(options: Options) -> str:
        return results_path(REPORT, options, STAMP).name

    assert name(Options(results_dir=tmp_path)) == "2026-11-22-vm.json"
    assert name(Options(results_dir=tmp_path, only=("e2e.chain5.c1",))) == "2026-11-22-vm-only.json"
    assert name(Options(results_dir=tmp_path, quick=True)) == "2026-11-22-vm-quick.json"
    assert name(Options(results_dir=tmp_path, quick=True, only=("memory",))) == (
        "2026-11-22-vm-quick.json"
    )
