"""A run of some scenarios never replaces the day's full run, which RESULTS.md names,
and a full run never replaces another."""

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


def test_a_full_run_never_replaces_an_earlier_one_of_the_same_day(tmp_path: Path) -> None:
    def write(options: Options) -> str:
        path = results_path(REPORT, options, STAMP)
        path.write_text("{}")
        return path.name

    full = Options(results_dir=tmp_path)
    assert [write(full) for _ in range(3)] == [
        "2026-11-22-vm.json",
        "2026-11-22-vm-2.json",
        "2026-11-22-vm-3.json",
    ]
    quick = Options(results_dir=tmp_path, quick=True)
    assert [write(quick) for _ in range(2)] == ["2026-11-22-vm-quick.json"] * 2
