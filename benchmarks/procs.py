"""Child processes of a benchmark: started with a log file, stopped by their own pid.

Every process a benchmark starts is stopped by it (SIGTERM, then SIGKILL after
a grace period), in a ``finally``: nothing outlives the scenario.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from apex.config import REPO_ROOT, Settings

WORK_DIR = REPO_ROOT / "var" / "bench"
"""Logs and scratch files of benchmark runs (git-ignored, like all of var/)."""


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``APEX_*`` variables that reproduce ``settings`` in a child process.

    Every setting, defaults included: a benchmark's children must not pick up
    whatever the parent's environment says.
    """
    return settings.to_env()


def spawn(
    argv: Sequence[str],
    *,
    name: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` from the repository root; stdout and stderr go to ``<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            list(argv),
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
        )


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def stop(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> int:
    """SIGTERM the process, SIGKILL it if it is still there after ``grace_s``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@contextlib.contextmanager
def running(procs: list[subprocess.Popen[bytes]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Stop every process in ``procs`` (including ones appended inside) on the way out."""
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            stop(proc)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def check_alive(proc: subprocess.Popen[bytes], name: str, log_dir: Path) -> None:
    """Raise with the log's tail if ``proc`` exited."""
    code = proc.poll()
    if code is not None:
        raise RuntimeError(
            f"{name} exited with code {code}; last lines of {log_dir / (name + '.log')}:\n"
            f"{tail(log_dir / f'{name}.log')}"
        )


def unique_suffix() -> str:
    return f"{time.strftime('%H%M%S')}-{os.getpid()}-{os.urandom(2).hex()}"
