"""The report as people read it: benchmarks/RESULTS.md and the Rich table at the end.

RESULTS.md is regenerated from the JSON, except the block between
``<!-- analysis:start -->`` and ``<!-- analysis:end -->`` — what limits each
figure, written by people after reading the profiles — which is kept as is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from benchmarks.external import _leaves, headline
from benchmarks.hop_timeline import table

ANALYSIS_START = "<!-- analysis:start -->"
ANALYSIS_END = "<!-- analysis:end -->"
SYSTEM_NAMES = {"apex": "Apex", "temporal": "Temporal", "dbos": "DBOS"}


# -- targets of DESIGN.md --------------------------------------------------------------------

Verdict = tuple[str, bool | None]
"""The measured figure as text, and whether it meets the target (None: not measured)."""


def _leaf(data: Any, pattern: str) -> float | None:
    regex = re.compile(pattern)
    for path, value in _leaves(data):
        if regex.search(path):
            return value
    return None


def _external(report: dict[str, Any], name: str) -> Any:
    entry = report["scenarios"].get(name, {})
    return entry.get("data") if entry.get("status") == "ok" else None


def _apex_cells(report: dict[str, Any], shape: str) -> list[tuple[int, dict[str, Any]]]:
    cells = []
    for entry in report["scenarios"].values():
        apex = entry.get("systems", {}).get("apex", {})
        if (
            entry.get("kind") == "e2e"
            and entry.get("shape") == shape
            and apex.get("status") == "ok"
        ):
            cells.append((entry["concurrency"], apex))
    return sorted(cells, key=lambda cell: cell[0])


def _not_measured(report: dict[str, Any], scenario: str) -> Verdict:
    entry = report["scenarios"].get(scenario)
    if entry is None:
        return ("not run", None)
    return (entry.get("reason") or entry.get("status", "not measured"), None)


def _decider(report: dict[str, Any]) -> Verdict:
    data = _external(report, "decider")
    rate = _leaf(data, r"decide_and_evolve\.commands_per_s$") or _leaf(data, r"commands_per_s$")
    p99 = _leaf(data, r"decide_and_evolve\.p99_us$") or _leaf(data, r"p99_us$")
    if rate is None:
        return _not_measured(report, "decider")
    met = rate >= 100_000 and (p99 is None or p99 < 100)
    return (f"{rate:,.0f} commands/s, p99 {_fmt(p99)} µs", met)


def _codec(report: dict[str, Any]) -> Verdict:
    data = _external(report, "codec")
    both = _leaf(data, r"encode \+ decode[^.]*\.codec\.median_us$")
    if both is None:
        return _not_measured(report, "codec")
    return (f"{both:.1f} µs (median, encode + decode, first event)", both < 10)


def _hop_latency(report: dict[str, Any]) -> Verdict:
    """Judged at the fewest runs in flight, every cell shown.

    In a closed loop of c runs each step waits about c ÷ steps/s (Little's law):
    at c=100 a 5 ms p50 would take 20,000 steps/s, which is the throughput
    target's business, not the path's.
    """
    cells = _apex_cells(report, "chain5")
    if not cells:
        return ("not run", None)
    parts = []
    for concurrency, apex in cells:
        hop = apex["step_to_step"]
        parts.append(f"c={concurrency}: {_fmt(hop.get('p50_ms'))} / {_fmt(hop.get('p99_ms'))}")
    fewest, path = cells[0]
    hop = path["step_to_step"]
    met = hop.get("p50_ms", math.inf) < 5 and hop.get("p99_ms", math.inf) < 25
    judged = f" (judged at c={fewest}; with more in flight a step also queues, ~c ÷ steps/s)"
    return ("p50 / p99 ms, chain5 — " + "; ".join(parts) + judged, met)


def _throughput(report: dict[str, Any]) -> Verdict:
    cells = _apex_cells(report, "chain5")
    if not cells:
        return ("not run", None)
    concurrency, best = max(cells, key=lambda cell: cell[1]["steps_per_s"])
    return (f"{best['steps_per_s']:,.0f} steps/s (c={concurrency})", best["steps_per_s"] >= 3000)


def _projection_lag(report: dict[str, Any]) -> Verdict:
    data = _external(report, "projection-lag")
    p99 = _leaf(data, r"projection_lag\.p99_ms$") or _leaf(data, r"^lag\.p99_ms$")
    if p99 is None:
        p99 = _leaf(data, r"p99_ms$")
    if p99 is None:
        return _not_measured(report, "projection-lag")
    # A JSON from before --projectors (no count in it) was one projector process.
    projectors = data.get("projectors", 1) if "lag" in data else None
    return (f"p99 {p99:.0f} ms{_processes(projectors, 'projector')}", p99 < 250)


def _rebuild(report: dict[str, Any]) -> Verdict:
    data = _external(report, "rebuild")
    rate = _leaf(data, r"events_per_s$")
    if rate is None:
        return _not_measured(report, "rebuild")
    return (f"{rate:,.0f} events/s{_processes(data.get('best_workers'), 'worker')}", rate >= 50_000)


def _processes(count: int | None, kind: str) -> str:
    """How many processes a figure used, as the targets table says it."""
    if count is None:
        return ""
    return f" ({count} {kind} process{'es' if count != 1 else ''})"


def _audit(report: dict[str, Any]) -> Verdict:
    data = _external(report, "audit")
    ms = _leaf(data, r"p99_ms$") or _leaf(data, r"(median|p50)_ms$")
    if ms is None:
        return _not_measured(report, "audit")
    return (f"{ms:.0f} ms", ms < 100)


def _memory(report: dict[str, Any]) -> Verdict:
    data = _external(report, "memory")
    if not data:
        return _not_measured(report, "memory")
    per_run = data["bytes_per_run"]
    return (f"{per_run:,} bytes per run at {data['active_runs']:,} active runs", per_run < 2048)


TARGETS: tuple[tuple[str, str, Callable[[dict[str, Any]], Verdict]], ...] = (
    (
        "decider alone (decide + evolve, 10-step DAG)",
        "≥ 100,000 commands/s, p99 < 100 µs",
        _decider,
    ),
    ("Avro encode + decode of one event", "< 10 µs", _codec),
    ("step finished → next step delivered, real Kafka", "p50 < 5 ms, p99 < 25 ms", _hop_latency),
    ("sustained throughput, 5-step DAG, no-op agents", "≥ 3,000 steps/s", _throughput),
    ("projection lag under that load", "p99 < 250 ms", _projection_lag),
    ("rebuilding read models from the log", "≥ 50,000 events/s", _rebuild),
    ("one run's full history for an audit", "< 100 ms", _audit),
    ("orchestrator memory", "< 2 KB per active run at 10,000", _memory),
)  # fmt: skip


# -- Markdown ------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int | float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(report: dict[str, Any]) -> str:
    m, v = report["machine"], report["versions"]
    lines = [
        "# Apex benchmark results",
        "",
        f"Generated by `apex bench{' --quick' if report['quick'] else ''}` on "
        f"{report['started_at']} (finished {report.get('finished_at', '?')}); the raw "
        f"figures are in `{_relative(report.get('results_file', ''))}`. Nothing here is a "
        "test assertion: the targets come from DESIGN.md. Reproduce: `apex dev up`, "
        "`pip install -c constraints.txt -e '.[bench]'`, then `apex bench --profile` on a "
        "quiet machine (benchmarks/README.md).",
        "",
        "## Machine and versions",
        "",
        f"- **Machine**: {m['host']}, {m['cores']} cores ({m['cpu_model']}), "
        f"{m['memory_gb']} GB RAM, {m['os']}; load average {m['load_average']} before, "
        f"{m.get('load_average_after', '?')} after; CPU pressure (PSI some, avg60) "
        f"{_psi(m.get('cpu_pressure'))} before, {_psi(m.get('cpu_pressure_after'))} after.",
        f"- **Apex**: commit {_revision(report.get('git'))}; "
        f"Python {v['python']}, Kafka {v.get('kafka')} (KRaft, one broker), "
        f"aiokafka {v.get('aiokafka')}, fastavro {v.get('fastavro')}, "
        f"PostgreSQL {v.get('postgresql')}, asyncpg {v.get('asyncpg')}.",
    ]
    for peer, status in report.get("peers", {}).items():
        name = SYSTEM_NAMES[peer]
        if status.get("status") == "ok":
            sdk = v.get("temporalio") if peer == "temporal" else v.get("dbos")
            detail = status.get("store") or f"database {status.get('database')}"
            version = " ".join(str(status.get("version", "")).split())
            lines.append(f"- **{name}**: {version}; Python SDK {sdk}; {detail}.")
        else:
            lines.append(f"- **{name}**: not measured — {status.get('reason')}")
    if warm := report.get("broker_warm_up"):
        lines.append(
            f"- **Broker warm-up**: {warm.get('seconds', 0):.0f} s of throwaway chain5 load "
            f"({warm.get('steps') or 0:,} steps, {warm.get('status')}) before the first "
            "cell, so that the JVM's JIT compiler is not billed to it."
        )
    lines += [
        "",
        "## Targets (DESIGN.md)",
        "",
        "| what | target | measured | met |",
        "|---|---|---|---|",
    ]
    for what, target, judge in TARGETS:
        measured, met = judge(report)
        mark = "yes" if met else ("**no**" if met is False else "-")
        lines.append(f"| {what} | {target} | {_one_line(measured)} | {mark} |")
    lines += _e2e_tables(report)
    lines += _other_tables(report)
    lines += _profile_tables(report)
    lines += _hop_table(report)
    return "\n".join(lines) + "\n"


def _e2e_tables(report: dict[str, Any]) -> list[str]:
    cells = [(n, e) for n, e in report["scenarios"].items() if e.get("kind") == "e2e"]
    if not cells:
        return []
    lines = [
        "",
        "## End to end, same DAGs, same machine",
        "",
        "Closed loop: *c* runs in flight, no-op steps; step → step is from a step's "
        "completion (its own clock) to the next step running on a worker; run latency is "
        "from the client's start to the client's receipt of the result. CPU ms / step: "
        "CPU time of the system's processes (Apex: orchestrator, worker, broker; Temporal: "
        "server, worker; DBOS: the application — which is also its client — and PostgreSQL's "
        "backends) divided by the steps completed; the broker and PostgreSQL are shared with "
        "whatever else runs on the machine. CPU pressure: share of the cell's wall time in "
        "which some runnable task waited for a CPU (Linux PSI) — the system's own processes "
        "competing for 2 cores count too, but a high figure on a light cell means neighbours. "
        "A cell measured in repeats (the systems taking turns): each figure is the median of "
        "its repeats' and the runs are all the repeats' together.",
        "",
        "| scenario | system | steps/s | runs/s | step→step p50 / p95 / p99 ms | "
        "run p50 / p99 ms | CPU ms / step | runs (failed or > 300 s) | CPU pressure |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in cells:
        for system, fig in entry["systems"].items():
            label = SYSTEM_NAMES.get(system, system)
            if fig.get("status") != "ok":
                reason = _one_line(str(fig.get("reason", "failed")))[:160]
                lines.append(f"| `{name}` | {label} | failed: {reason} | | | | | | |")
                continue
            hop, run = fig["step_to_step"], fig["run_latency"]
            lines.append(
                f"| `{name}` | {label} | {_fmt(fig['steps_per_s'])} | {_fmt(fig['runs_per_s'])} | "
                f"{_fmt(hop.get('p50_ms'))} / {_fmt(hop.get('p95_ms'))} / "
                f"{_fmt(hop.get('p99_ms'))} | {_fmt(run.get('p50_ms'))} / "
                f"{_fmt(run.get('p99_ms'))} | {_fmt(fig.get('cpu_ms_per_step'), 2)} | "
                f"{fig['runs_completed']} ({fig['runs_failed']}){_repeats(fig)} | "
                f"{_fmt(fig.get('cpu_pressure_pct'))}% |"
            )
    peers = sorted({p for _, e in cells for p in e.get("ratios", {})})
    if peers:
        lines += [
            "",
            "### Apex against each peer (above 1x means Apex leads)",
            "",
            "Throughput x = Apex steps/s ÷ peer steps/s; latency x and CPU x = peer ÷ Apex.",
            "",
            "| scenario | "
            + " | ".join(
                f"vs {SYSTEM_NAMES[p]}: throughput x | step p50 x | step p99 x | run p99 x | "
                "CPU/step x"
                for p in peers
            )
            + " |",
            "|---|" + "---:|" * (5 * len(peers)),
        ]
        for name, entry in cells:
            row = [f"`{name}`"]
            for peer in peers:
                r = entry.get("ratios", {}).get(peer, {})
                row += [
                    _x(r.get("throughput_x")),
                    _x(r.get("step_p50_x")),
                    _x(r.get("step_p99_x")),
                    _x(r.get("run_p99_x")),
                    _x(r.get("cpu_x")),
                ]
            lines.append("| " + " | ".join(row) + " |")
    usage = [
        (name, system, proc, figures)
        for name, entry in cells
        for system, fig in entry["systems"].items()
        for proc, figures in (fig.get("processes") or {}).items()
    ]
    if usage:
        lines += [
            "",
            "### CPU of each process during the measured phase (1.0 = one core busy)",
            "",
            "| scenario | system | process | CPU (cores) | RSS MB |",
            "|---|---|---|---:|---:|",
        ]
        for name, system, proc, figures in usage:
            lines.append(
                f"| `{name}` | {SYSTEM_NAMES.get(system, system)} | {proc} | "
                f"{_fmt(figures.get('cpu_share_of_one_core'), 2)} | "
                f"{_fmt(figures.get('rss_mb'))} |"
            )
    return lines


def _repeats(figures: dict[str, Any]) -> str:
    count = len(figures.get("repeats") or ())
    return f" in {count} repeats" if count > 1 else ""


def _other_tables(report: dict[str, Any]) -> list[str]:
    lines = ["", "## Other scenarios", ""]
    for name, entry in report["scenarios"].items():
        if entry.get("kind") == "e2e":
            continue
        lines.append(f"### `{name}` — {entry.get('title', '')}")
        lines.append("")
        if entry.get("status") != "ok":
            lines.append(f"{entry.get('status')}: {_one_line(str(entry.get('reason', '')))}")
            lines.append("")
            continue
        data = entry.get("data")
        figures = (
            [(k, float(v)) for k, v in data.items() if isinstance(v, int | float)]
            if entry.get("kind") == "memory"
            else headline(data, limit=12)
        )
        lines += ["| figure | value |", "|---|---:|"]
        lines += [f"| {path} | {_fmt(value, 2)} |" for path, value in figures]
        lines.append("")
    return lines


def _profile_tables(report: dict[str, Any]) -> list[str]:
    profiles = report.get("profiles") or {}
    if not profiles:
        return []
    heading = "## Where the CPU goes (py-spy, a run of the throughput scenario after the measured)"
    lines = ["", heading, ""]
    for name, summary in profiles.items():
        if not summary.get("samples"):
            continue
        lines += [
            f"### {name} — {summary['samples']:,} samples",
            "",
            "| layer | % of CPU |",
            "|---|---:|",
        ]
        lines += [f"| {layer} | {pct} |" for layer, pct in summary["by_layer_pct"].items()]
        lines += ["", "| function (self time) | % |", "|---|---:|"]
        lines += [f"| `{func}` | {pct} |" for func, pct in summary["top_self_pct"][:12]]
        lines.append("")
    return lines


def _hop_table(report: dict[str, Any]) -> list[str]:
    found = report.get("hop_breakdown") or {}
    if not found:
        return []
    heading = (
        f"## Where a hop's time goes ({found['scenario']}, a run with its requests timed "
        "after the measured; `benchmarks/hop_timeline.py`)"
    )
    if "error" in found:
        return ["", heading, "", f"No breakdown: {_one_line(found['error'])}", ""]
    return [
        "",
        heading,
        "",
        table(found),
        "",
        f"{found['hops']:,} hops ({found['left_out']} left out); the transaction's "
        f"{found.get('round_trips', 3)} round trips (protocol "
        f"v{found.get('transaction_protocol', 1)}) take {found['round_trips_mean_ms']:.2f} ms "
        "of the mean hop.",
        "",
    ]


def _revision(git: dict[str, Any] | None) -> str:
    if not git or not git.get("commit"):
        return "unknown"
    return f"`{git['commit']}`" + (" with uncommitted changes" if git.get("dirty") else "")


def _psi(pressure: dict[str, float] | None) -> str:
    return "-" if not pressure else f"{pressure.get('avg60', 0):.0f}%"


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _relative(path: str) -> str:
    marker = "benchmarks/"
    return path[path.index(marker) :] if marker in path else path


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """Write the generated part; keep the hand-written analysis block of the old file."""
    analysis = ""
    if path.exists():
        old = path.read_text()
        if ANALYSIS_START in old and ANALYSIS_END in old:
            start = old.index(ANALYSIS_START)
            analysis = old[start : old.index(ANALYSIS_END) + len(ANALYSIS_END)]
    if not analysis:
        analysis = (
            f"{ANALYSIS_START}\n## What limits each figure\n\n"
            f"(Written after reading the profiles; kept when the tables are regenerated.)\n"
            f"{ANALYSIS_END}"
        )
    path.write_text(markdown(report) + "\n" + analysis + "\n")


# -- Rich ------------------------------------------------------------------------------------


def rich_table(report: dict[str, Any]) -> Table:
    table = Table(
        title="apex bench: end to end (x: Apex's lead over that peer, above 1 = Apex ahead)",
        caption=report.get("results_file", ""),
    )
    columns = ("scenario", "system", "steps/s", "hop p50 ms", "hop p99 ms", "run p99 ms",
               "CPU ms/step", "thr x", "p99 x")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in {"scenario", "system"} else "right")
    for name, entry in report["scenarios"].items():
        if entry.get("kind") != "e2e":
            continue
        for system, fig in entry["systems"].items():
            label = SYSTEM_NAMES.get(system, system)
            if fig.get("status") != "ok":
                table.add_row(name, label, "[red]failed[/]", *[""] * 6)
                continue
            r = entry.get("ratios", {}).get(system, {})
            table.add_row(
                name,
                label,
                _fmt(fig["steps_per_s"]),
                _fmt(fig["step_to_step"].get("p50_ms")),
                _fmt(fig["step_to_step"].get("p99_ms")),
                _fmt(fig["run_latency"].get("p99_ms")),
                _fmt(fig.get("cpu_ms_per_step"), 2),
                _x(r.get("throughput_x")) if r else "",
                _x(r.get("step_p99_x")) if r else "",
            )
    return table


def targets_table(report: dict[str, Any]) -> Table:
    table = Table(title="DESIGN.md targets")
    for column in ("what", "target", "measured", "met"):
        table.add_column(column)
    for what, target, judge in TARGETS:
        measured, met = judge(report)
        mark = "[green]yes[/]" if met else ("[red]no[/]" if met is False else "-")
        table.add_row(what, target, measured, mark)
    return table


def main() -> None:
    """``python -m benchmarks.report RESULTS_JSON [MARKDOWN]``: regenerate the Markdown."""
    import json
    import sys

    from benchmarks.harness import MARKDOWN

    if len(sys.argv) < 2:
        raise SystemExit(__doc__.splitlines()[0] + "\nusage: python -m benchmarks.report JSON [MD]")
    report = json.loads(Path(sys.argv[1]).read_text())
    write_markdown(report, Path(sys.argv[2]) if len(sys.argv) > 2 else MARKDOWN)


if __name__ == "__main__":
    main()
