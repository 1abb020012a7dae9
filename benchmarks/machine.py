"""What the figures were measured on: the machine and every version involved."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
from pathlib import Path
from typing import Any

import psutil

from apex.config import Settings


def machine() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu_pressure": cpu_pressure(),
    }


def cpu_pressure() -> dict[str, float] | None:
    """Linux PSI: % of time some runnable task waited for a CPU (avg10/avg60/avg300).

    A figure measured while this is high measured the neighbours as much as the system.
    """
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    return {k: float(v) for k, v in fields.items() if k.startswith("avg")}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_stall_us() -> int | None:
    """PSI's cumulative "some" CPU stall, in µs: compare two readings over an interval."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    return int(fields["total"]) if "total" in fields else None


def git_revision() -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it."""
    import subprocess

    from apex.config import REPO_ROOT

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.SubprocessError):
        return {}


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


async def postgres_version(settings: Settings) -> str | None:
    import asyncpg

    try:
        conn = await asyncpg.connect(settings.asyncpg_dsn, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return None
    try:
        return str(await conn.fetchval("show server_version"))
    finally:
        await conn.close()


async def kafka_version(settings: Settings) -> str | None:
    """The local broker's version as the dev stack reports it (the jar it runs)."""
    try:
        from apex.devstack import stack

        for status in await stack.status(settings):
            if status.name == "kafka" and status.version:
                return status.version
    except Exception:  # the stack module is optional for a remote broker
        return None
    return None


async def versions(settings: Settings) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "apex": package_version("apex-orchestrator"),
        "kafka": await kafka_version(settings),
        "aiokafka": package_version("aiokafka"),
        "fastavro": package_version("fastavro"),
        "postgresql": await postgres_version(settings),
        "asyncpg": package_version("asyncpg"),
        "temporalio": package_version("temporalio"),
        "dbos": package_version("dbos"),
    }
