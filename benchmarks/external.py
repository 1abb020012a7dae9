"""Scenarios measured by scripts of their own, run as ``python <script> --json``.

The decider, codec, read-model rebuild, audit-history and projection-lag
benchmarks are written next to the code they measure. The harness runs each
script in a child process, keeps its JSON as is, and pulls a few headline
figures out for the summary table (:func:`headline`). A script that is not
there yet is reported as "not available yet", not as a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Script:
    scenario: str
    file: str
    title: str
    quick_args: tuple[str, ...] = ()
    """Arguments for a --quick run, passed only if the script's --help mentions them."""
    timeout_s: float = 900.0


SCRIPTS = (
    Script(
        "decider",
        "bench_decider.py",
        "decider alone (decide + evolve, 10-step DAG)",
        ("--runs", "300"),
    ),
    Script(
        "codec",
        "bench_codec.py",
        "Avro encode + decode of one event",
        ("--iterations", "2000", "--warmup", "200"),
    ),
    Script("projection-lag", "bench_projection_lag.py", "projection lag under load", ("--quick",)),
    Script("rebuild", "bench_rebuild.py", "rebuilding read models from the log", ("--quick",)),
    Script("audit", "bench_audit.py", "one run's full history for an audit", ("--quick",)),
)


def exists(script: Script) -> bool:
    return (BENCH_DIR / script.file).exists()


def run_script(script: Script, *, quick: bool) -> dict[str, Any]:
    """Run one script; ``{"status": "ok", "data": ...}`` or why not."""
    path = BENCH_DIR / script.file
    if not path.exists():
        return {"status": "not available yet", "reason": f"benchmarks/{script.file} not written"}
    argv = [sys.executable, str(path), "--json"]
    if quick:
        argv += _supported(path, script.quick_args)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=script.timeout_s,
            check=False,
            cwd=BENCH_DIR.parent,
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {script.timeout_s:.0f} s"}
    if done.returncode != 0:
        return {
            "status": "failed",
            "reason": f"exit {done.returncode}: {(done.stderr or done.stdout)[-1500:]}",
            "argv": argv[1:],
        }
    try:
        data = _last_json(done.stdout)
    except ValueError as exc:
        return {"status": "failed", "reason": f"no JSON on stdout: {exc}", "argv": argv[1:]}
    return {"status": "ok", "argv": argv[1:], "data": data}


def _supported(path: Path, args: tuple[str, ...]) -> list[str]:
    """The options in ``args`` (with their values) that ``path --help`` knows."""
    try:
        helptext = subprocess.run(
            [sys.executable, str(path), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=BENCH_DIR.parent,
        ).stdout
    except subprocess.TimeoutExpired:
        return []
    kept: list[str] = []
    i = 0
    while i < len(args):
        option = args[i]
        value = (
            args[i + 1 : i + 2] if i + 1 < len(args) and not args[i + 1].startswith("--") else ()
        )
        if option in helptext:
            kept += [option, *value]
        i += 1 + len(value)
    return kept


def _last_json(stdout: str) -> Any:
    """The script's JSON: the whole output, or else its last line that parses."""
    text = stdout.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    for line in reversed(text.splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    raise ValueError(text[-300:] or "(empty)")


# -- headline figures ---------------------------------------------------------------------

_INTERESTING = (
    "per_s", "_us", "_ms", "p50", "p95", "p99", "lag", "seconds", "bytes",
)  # fmt: skip


def headline(data: Any, limit: int = 8) -> list[tuple[str, float]]:
    """A few numeric leaves whose names look like figures (throughputs, percentiles)."""
    found = [
        (path, value)
        for path, value in _leaves(data)
        if any(mark in path.rsplit(".", 1)[-1] for mark in _INTERESTING)
    ]
    return found[:limit]


def _leaves(data: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(data, dict):
        for key, value in data.items():
            if key in {"machine", "python", "versions"}:
                continue
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data[:20]):
            label = value.get("event") or value.get("name") if isinstance(value, dict) else None
            yield from _leaves(value, f"{prefix}[{label or index}]")
    elif isinstance(data, int | float) and not isinstance(data, bool):
        yield prefix, float(data)
