"""``apex bench``: every scenario, Apex and its peers side by side, in one run.

The harness plans the scenarios, brings the peers up (Temporal's dev server,
DBOS's database), runs each scenario's drivers as child processes — one system
after the other within a scenario, so neighbours see the same machine; a cell
with repeats lets the systems take turns, repeat by repeat — and
writes ``benchmarks/results/<date>-<host>.json`` and ``benchmarks/RESULTS.md``.

Scenarios (``--only`` takes shell patterns of these names):

- ``decider``, ``codec``, ``rebuild``, ``audit``: scripts of their own, run with
  ``--json`` (benchmarks/external.py);
- ``e2e.<shape>.c<concurrency>``: the DAGs of benchmarks/workload.py on Apex,
  Temporal and DBOS (benchmarks/apex_e2e.py, benchmarks/peers/);
- ``memory``: orchestrator memory per active run (benchmarks/apex_memory.py);
- ``projection-lag``: benchmarks/bench_projection_lag.py (1 and 2 projector
  processes at 12,000 events/s; benchmarks/projection_lag.py, the projector
  probed from outside under the chain5 throughput load, only if it is missing).

Nothing here asserts anything: figures are written, compared with the targets
of DESIGN.md, and read by people.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apex.config import REPO_ROOT, Settings
from benchmarks import external, loop, procs
from benchmarks.hop_timeline import breakdown, load
from benchmarks.machine import cpu_stall_us, git_revision, machine, versions
from benchmarks.profiling import summarise
from benchmarks.workload import SHAPES

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
MARKDOWN = REPO_ROOT / "benchmarks" / "RESULTS.md"
PEERS = ("temporal", "dbos")


@dataclass(frozen=True)
class Level:
    concurrency: int
    runs: int
    max_seconds: float
    repeats: int = 1
    """Measurements of each system per cell (``--repeat`` overrides): the figures are
    their medians."""


FULL_LEVELS = (
    Level(1, 100, 20, repeats=5),
    Level(100, 6000, 60),
    Level(1000, 24000, 60),
)
"""Runs per cell: enough for Apex to hold its concurrency for ~30-60 s, as the peers do
(they reach ``max_seconds`` first). With 6,000 runs at c=1000 Apex's cell lasted 11 s, of
which the first and the last ~2 s (a run's latency each: the pipeline filling, then the last
1,000 runs draining) were a third: the target is *sustained* throughput.

One run in flight, five repeats of ~5 s each (Temporal stops at 20 s): a single one was
at the mercy of the machine's phase. On this VM the same Apex build measured a c=1 hop
p50 of 6.2 ms and, an hour later, 7.7 ms, with every process's CPU per step up alike;
in one full run its cell, the first after the broker's warm-up, measured 10.4 ms while
the next ones in minutes were at 7. The medians of interleaved repeats meet the same
phases on every system."""
QUICK_LEVELS = (Level(1, 5, 10), Level(20, 60, 10))


@dataclass
class Options:
    quick: bool = False
    only: tuple[str, ...] = ()
    peers: tuple[str, ...] = PEERS
    repeat: int | None = None
    """Measurements per end-to-end cell; ``None``: each level's own (:class:`Level`)."""
    profile: bool = False
    worker_concurrency: int = 100
    memory_runs: int = 10_000
    results_dir: Path = RESULTS_DIR
    markdown: Path | None = None
    """Where the Markdown goes; None: RESULTS.md for a full run of everything, else nowhere."""
    warmup: int = 20
    warmup_s: float = loop.WARMUP_SECONDS
    """Each end-to-end cell's least warm-up time, every system alike (0 with --quick)."""
    warm_broker_s: float = 90.0
    """Seconds of throwaway Apex load before the first end-to-end cell (not with --quick)."""

    def levels(self) -> tuple[Level, ...]:
        return QUICK_LEVELS if self.quick else FULL_LEVELS


@dataclass
class Scenario:
    name: str
    kind: str  # external | e2e | memory
    title: str
    script: external.Script | None = None
    shape: str = ""
    level: Level | None = None


def plan(options: Options) -> list[Scenario]:
    scenarios: list[Scenario] = [
        Scenario(s.scenario, "external", s.title, script=s)
        for s in external.SCRIPTS
        if s.scenario in {"decider", "codec"}
    ]
    for shape in SHAPES.values():
        for level in options.levels():
            scenarios.append(
                Scenario(
                    f"e2e.{shape.name}.c{level.concurrency}",
                    "e2e",
                    f"{shape.title}, {level.concurrency} concurrent run(s)",
                    shape=shape.name,
                    level=level,
                )
            )
    scenarios.append(
        Scenario("memory", "memory", "orchestrator memory per active run (approval gate)")
    )
    for script in external.SCRIPTS:
        if script.scenario in {"decider", "codec"}:
            continue
        if script.scenario == "projection-lag" and not external.exists(script):
            # No script of its own: probe the projector from outside, under the throughput load.
            level = options.levels()[-1]
            scenarios.append(
                Scenario(
                    "projection-lag",
                    "projection",
                    f"projection lag, projector running under chain5 at c={level.concurrency}",
                    shape="chain5",
                    level=level,
                )
            )
            continue
        scenarios.append(Scenario(script.scenario, "external", script.title, script=script))
    if options.only:
        scenarios = [
            s for s in scenarios if any(fnmatch.fnmatchcase(s.name, p) for p in options.only)
        ]
    return scenarios


# -- the run --------------------------------------------------------------------------


@dataclass
class Peers:
    """Peers available for this run, and why the others are not."""

    temporal_address: str = ""
    temporal_pid: int = 0
    dbos_url: str = ""
    status: dict[str, dict[str, Any]] = field(default_factory=dict)

    def available(self) -> list[str]:
        return [name for name, st in self.status.items() if st.get("status") == "ok"]


Progress = Callable[[str], None]


def run(options: Options, progress: Progress | None = None) -> dict[str, Any]:
    """Run the plan; return the report (also written to ``options.results_dir``)."""
    say = progress or (lambda _msg: None)
    settings = Settings.from_env()
    stamp = datetime.now(UTC)
    run_dir = procs.WORK_DIR / f"run-{stamp:%Y%m%d-%H%M%S}"
    _prune(procs.WORK_DIR, keep=10)
    scenarios = plan(options)
    report: dict[str, Any] = {
        "schema": 1,
        "started_at": stamp.isoformat(timespec="seconds"),
        "quick": options.quick,
        "options": _jsonable(asdict(options)),
        "machine": machine(),
        "versions": asyncio.run(versions(settings)),
        "git": git_revision(),
        "peers": {},
        "scenarios": {},
        "profiles": {},
        "hop_breakdown": {},
    }
    needs_peers = any(s.kind == "e2e" for s in scenarios) and options.peers
    with _peers(options.peers if needs_peers else (), run_dir, say) as peers:
        report["peers"] = peers.status
        if "temporal" in peers.status:
            report["versions"]["temporal"] = peers.status["temporal"].get("version")
        warm = not options.quick and options.warm_broker_s > 0
        for scenario in scenarios:
            if warm and scenario.kind in {"e2e", "projection"}:
                # Right before the first cell that loads the broker, not before the
                # micro-benchmarks: the JIT compiles the warm-up queued go on after it.
                say(f"warming the broker's JIT up: {options.warm_broker_s:.0f} s of chain5 load")
                report["broker_warm_up"] = _warm_broker(options, run_dir)
                warm = False
            say(f"{scenario.name}: {scenario.title}")
            if scenario.kind == "external":
                assert scenario.script is not None
                entry = external.run_script(scenario.script, quick=options.quick)
            elif scenario.kind == "memory":
                entry = _memory(options, run_dir)
            elif scenario.kind == "projection":
                entry = _projection_lag(scenario, options, run_dir)
            else:
                entry = _e2e(scenario, options, peers, run_dir, report, say)
            report["scenarios"][scenario.name] = {
                "kind": scenario.kind,
                "title": scenario.title,
                **entry,
            }
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    after = machine()
    report["machine"]["load_average_after"] = after["load_average"]
    report["machine"]["cpu_pressure_after"] = after["cpu_pressure"]
    path = results_path(report, options, stamp)
    report["results_file"] = str(path)
    markdown = _markdown_target(options)
    if markdown is not None:
        report["markdown_file"] = str(markdown)
    options.results_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    if markdown is not None:
        from benchmarks.report import write_markdown

        write_markdown(report, markdown)
    return report


def _prune(work_dir: Path, keep: int) -> None:
    """Logs of the last ``keep`` runs stay in var/bench/; older ones go."""
    runs = sorted(work_dir.glob("run-*"))
    for old in runs[: max(0, len(runs) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def _markdown_target(options: Options) -> Path | None:
    if options.markdown is not None:
        return options.markdown
    if options.quick or options.only:
        return None  # a partial run must not replace the published figures
    return MARKDOWN


def results_path(report: dict[str, Any], options: Options, stamp: datetime) -> Path:
    """``<date>-<host>.json`` for a full run, ``-quick`` for a quick one, ``-only`` for one
    of some scenarios (which must not replace the full run that RESULTS.md names). A
    full run never replaces another: the day's second is ``<date>-<host>-2.json``, and so
    on. A later quick or partial run of the same day replaces the earlier one."""
    stem = f"{stamp:%Y-%m-%d}-{report['machine']['host']}"
    if options.quick or options.only:
        return options.results_dir / f"{stem}{'-quick' if options.quick else '-only'}.json"
    path, n = options.results_dir / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = options.results_dir / f"{stem}-{n}.json"
    return path


@contextlib.contextmanager
def _peers(wanted: tuple[str, ...], run_dir: Path, say: Progress) -> Iterator[Peers]:
    peers = Peers()
    for name, sdk in (("temporal", "temporalio"), ("dbos", "dbos")):
        if name in wanted and importlib.util.find_spec(sdk) is None:
            peers.status[name] = {
                "status": "unavailable",
                "reason": f"the {sdk} package is not installed: pip install -e '.[bench]'",
            }
    wanted = tuple(name for name in wanted if name not in peers.status)
    with contextlib.ExitStack() as stack:
        if "temporal" in wanted:
            from benchmarks.peers import temporal_setup

            say("temporal: building (cached) and starting the dev server")
            try:
                server = stack.enter_context(temporal_setup.dev_server(run_dir / "temporal"))
            except temporal_setup.TemporalUnavailable as exc:
                peers.status["temporal"] = {"status": "unavailable", "reason": str(exc)}
            else:
                peers.temporal_address, peers.temporal_pid = server.address, server.pid
                peers.status["temporal"] = {
                    "status": "ok",
                    "version": server.version,
                    "address": server.address,
                    "store": "start-dev: in-memory SQLite",
                }
        if "dbos" in wanted:
            say("dbos: creating its database (once)")
            try:
                from benchmarks.peers import dbos_setup

                peers.dbos_url = asyncio.run(dbos_setup.ensure_database(Settings.from_env()))
            except Exception as exc:
                peers.status["dbos"] = {"status": "unavailable", "reason": repr(exc)}
            else:
                peers.status["dbos"] = {
                    "status": "ok",
                    "version": dbos_setup.version(),
                    "database": peers.dbos_url.rsplit("/", 1)[-1],
                }
        yield peers


def _e2e(
    scenario: Scenario,
    options: Options,
    peers: Peers,
    run_dir: Path,
    report: dict[str, Any],
    say: Progress,
) -> dict[str, Any]:
    """The scenario's drivers, one system after the other; with ``--profile``, the
    throughput cell's profile and the hop cell's timeline, each a run of its own."""
    assert scenario.level is not None
    level = scenario.level
    common = [
        "--shape", scenario.shape,
        "--concurrency", str(level.concurrency),
        "--runs", str(level.runs),
        "--max-seconds", str(level.max_seconds),
        "--warmup", str(min(options.warmup, max(2, level.runs // 5))),
        "--warmup-seconds", str(_warmup_s(options)),
        "--worker-concurrency", str(options.worker_concurrency),
        "--json",
    ]  # fmt: skip
    drivers: dict[str, list[str]] = {"apex": ["benchmarks.apex_e2e", *common]}
    if "temporal" in peers.available():
        drivers["temporal"] = [
            "benchmarks.peers.temporal_e2e", *common,
            "--address", peers.temporal_address, "--server-pid", str(peers.temporal_pid),
        ]  # fmt: skip
    if "dbos" in peers.available():
        drivers["dbos"] = ["benchmarks.peers.dbos_e2e", *common, "--database-url", peers.dbos_url]
    profile_here = options.profile and _is_profiled(scenario, options)
    timeout = level.max_seconds + 600
    count = options.repeat or level.repeats
    repeats: dict[str, list[dict[str, Any]]] = {system: [] for system in drivers}
    order = list(drivers)
    for attempt in range(count):
        # The systems take turns, and the first of each turn changes: a slow phase of
        # the machine falls on every system alike, not on whichever runs first.
        shift = attempt % len(order)
        for system in order[shift:] + order[:shift]:
            say(f"{scenario.name}: {system} ({attempt + 1}/{count})")
            extra: list[str] = []
            if system == "apex":
                extra += ["--log-dir", str(run_dir / scenario.name / f"apex-{attempt}")]
            argv = drivers[system]
            repeats[system].append(_driver(argv + extra, timeout, run_dir / scenario.name, system))
    systems = {system: _aggregate(done) for system, done in repeats.items()}
    if profile_here:
        # A run of its own, after the measured ones: py-spy takes CPU from the services
        # on 2 cores, and this is the throughput target's cell. Its figures are not kept.
        say(f"{scenario.name}: apex under py-spy (the profile; figures not kept)")
        profiled = [
            "--log-dir", str(run_dir / scenario.name / "apex-profiled"),
            "--profile-dir", str(run_dir / scenario.name / "profile"),
        ]  # fmt: skip
        _driver(drivers["apex"] + profiled, timeout, run_dir / scenario.name, "apex")
        for name in ("orchestrator", "worker"):
            path = run_dir / scenario.name / "profile" / f"{name}.txt"
            if path.exists():
                report["profiles"][f"{scenario.name}/{name}"] = summarise(path)
    if options.profile and scenario.shape == "chain5" and level.concurrency == 1:
        # Where the hop's time goes (benchmarks/hop_timeline.py), also a run of its own:
        # noting every request costs the services a little. Its figures are not kept.
        say(f"{scenario.name}: apex with its requests timed (the hop's segments)")
        timeline = run_dir / scenario.name / "timeline"
        timed = ["--log-dir", str(run_dir / scenario.name / "apex-timed")]
        _driver(drivers["apex"] + timed + ["--timeline-dir", str(timeline)], timeout,
                run_dir / scenario.name, "apex")  # fmt: skip
        try:
            report["hop_breakdown"] = {"scenario": scenario.name, **breakdown(*load(timeline))}
        except (OSError, ValueError) as exc:
            report["hop_breakdown"] = {"scenario": scenario.name, "error": str(exc)}
    return {
        "status": "ok" if systems.get("apex", {}).get("status") == "ok" else "failed",
        "shape": scenario.shape,
        "concurrency": level.concurrency,
        "systems": systems,
        "ratios": ratios(systems),
    }


def _warm_broker(options: Options, run_dir: Path) -> dict[str, Any]:
    """Throwaway load so that the first cell does not pay for the broker's JIT.

    A freshly started broker spends most of its CPU in the JVM's C2 compiler
    for its first minute or so (measured: the C2 thread was the busiest of
    the broker during a c=1 cell run right after `apex dev up`), which the first
    cell (c=1, the most latency-sensitive) paid for and the later ones did not. A
    broker in service is warm; the peers have no JIT to warm.
    """
    seconds = options.warm_broker_s
    argv = [
        "benchmarks.apex_e2e", "--shape", "chain5", "--concurrency", "100",
        "--runs", "1000000", "--max-seconds", str(seconds),
        "--warmup", "2", "--warmup-seconds", "0",
        "--worker-concurrency", str(options.worker_concurrency), "--json",
        "--log-dir", str(run_dir / "warm-up"),
    ]  # fmt: skip
    figures = _driver(argv, seconds + 300, run_dir / "warm-up", "apex")
    return {
        "seconds": seconds,
        "status": figures.get("status"),
        "steps": figures.get("steps_completed"),
        **({"reason": figures["reason"]} if "reason" in figures else {}),
    }


def _is_profiled(scenario: Scenario, options: Options) -> bool:
    """The throughput scenario: the chain at the highest concurrency."""
    top = max(level.concurrency for level in options.levels())
    return (
        scenario.shape == "chain5"
        and scenario.level is not None
        and (scenario.level.concurrency == top)
    )


def _driver(args: list[str], timeout: float, log_dir: Path, system: str) -> dict[str, Any]:
    """Run a driver module; its figures, or why there are none."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"{system}-driver.log"
    argv = [sys.executable, "-m", *args]
    t0 = time.monotonic()
    stall0 = cpu_stall_us()
    try:
        with stderr_path.open("ab") as stderr:
            done = subprocess.run(
                argv,
                stdout=subprocess.PIPE,
                stderr=stderr,
                timeout=timeout,
                check=False,
                cwd=REPO_ROOT,
            )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"driver timed out after {timeout:.0f} s"}
    out = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0 or not out:
        return {
            "status": "failed",
            "reason": f"driver exit {done.returncode}: {procs.tail(stderr_path, 12)}",
        }
    try:
        figures = json.loads(out.splitlines()[-1])
    except json.JSONDecodeError:
        return {"status": "failed", "reason": f"driver printed no JSON: {out[-300:]}"}
    figures["status"] = "ok" if figures.get("runs_completed") else "failed"
    figures["driver_seconds"] = round(time.monotonic() - t0, 1)
    stall1 = cpu_stall_us()
    if stall0 is not None and stall1 is not None:
        # Share of the time some runnable task (ours or a neighbour's) waited for a CPU.
        wall_us = (time.monotonic() - t0) * 1e6
        figures["cpu_pressure_pct"] = round(100 * (stall1 - stall0) / wall_us, 1)
    processes = figures.get("processes") or {}
    if figures.get("steps_completed") and processes:
        # CPU the system spent per step, all its measured processes (not the client) together.
        cpu = sum(p.get("cpu_s", 0.0) for p in processes.values())
        figures["cpu_ms_per_step"] = round(1000 * cpu / figures["steps_completed"], 3)
    return dict(figures)


def _aggregate(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One repeat as is; several: each figure the median of the repeats' (a failed
    repeat fails the cell), the run counts summed, the repeats kept."""
    if len(repeats) == 1:
        return repeats[0]
    failed = [r for r in repeats if r.get("status") != "ok"]
    if failed:
        return {**failed[0], "repeats": repeats}

    def median(values: Iterator[Any]) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), 3) if present else None

    merged = dict(repeats[0])
    for key in ("steps_per_s", "runs_per_s", "cpu_ms_per_step", "cpu_pressure_pct"):
        merged[key] = median(r.get(key) for r in repeats)
    for key in ("runs_completed", "runs_failed", "steps_completed"):
        merged[key] = sum(r.get(key) or 0 for r in repeats)
    for block in ("step_to_step", "run_latency"):
        merged[block] = {
            k: sum(r[block].get(k) or 0 for r in repeats)
            if k == "count"
            else median(r[block].get(k) for r in repeats)
            for k in repeats[0][block]
        }
    merged["processes"] = {
        name: {
            k: median(r.get("processes", {}).get(name, {}).get(k) for r in repeats) for k in figures
        }
        for name, figures in (repeats[0].get("processes") or {}).items()
    }
    merged["repeats"] = repeats
    return merged


def ratios(systems: dict[str, Any]) -> dict[str, Any]:
    """Apex against each peer; above 1 means Apex leads on that figure."""
    apex = systems.get("apex", {})
    out: dict[str, Any] = {}
    if apex.get("status") != "ok":
        return out
    for peer, figures in systems.items():
        if peer == "apex" or figures.get("status") != "ok":
            continue
        out[peer] = {
            "throughput_x": _ratio(apex["steps_per_s"], figures["steps_per_s"]),
            "step_p50_x": _ratio(
                figures["step_to_step"].get("p50_ms"), apex["step_to_step"].get("p50_ms")
            ),
            "step_p99_x": _ratio(
                figures["step_to_step"].get("p99_ms"), apex["step_to_step"].get("p99_ms")
            ),
            "run_p99_x": _ratio(
                figures["run_latency"].get("p99_ms"), apex["run_latency"].get("p99_ms")
            ),
            "cpu_x": _ratio(figures.get("cpu_ms_per_step"), apex.get("cpu_ms_per_step")),
        }
    return out


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 2)


def _warmup_s(options: Options) -> float:
    return 0.0 if options.quick else options.warmup_s


def _projection_lag(scenario: Scenario, options: Options, run_dir: Path) -> dict[str, Any]:
    assert scenario.level is not None
    level = scenario.level
    argv = [
        *("benchmarks.apex_e2e", "--shape", scenario.shape, "--projector", "--json"),
        *("--concurrency", str(level.concurrency), "--runs", str(level.runs)),
        *("--max-seconds", str(level.max_seconds), "--warmup", str(options.warmup)),
        *("--warmup-seconds", str(_warmup_s(options))),
        *("--worker-concurrency", str(options.worker_concurrency)),
        *("--log-dir", str(run_dir / scenario.name / "apex")),
    ]
    figures = _driver(argv, level.max_seconds + 600, run_dir / scenario.name, "apex")
    lag = figures.get("projection_lag")
    if figures.get("status") != "ok" or not lag or not lag.get("count"):
        return {"status": "failed", "reason": figures.get("reason", "no lag samples")}
    return {"status": "ok", "data": {"projection_lag": lag, "under_load": figures}}


def _memory(options: Options, run_dir: Path) -> dict[str, Any]:
    runs = min(options.memory_runs, 1000) if options.quick else options.memory_runs
    result = _driver(
        ["benchmarks.apex_memory", "--runs", str(runs), "--json"],
        timeout=900,
        log_dir=run_dir / "memory",
        system="apex",
    )
    if "bytes_per_run" not in result:
        return {"status": "failed", "reason": result.get("reason", "no figures")}
    result["status"] = "ok"
    return {"status": "ok", "data": result}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
