"""What every local service has in common: files, start, readiness, stop, status."""

from __future__ import annotations

import asyncio
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from apex.config import Settings
from apex.devstack.process import (
    StackError,
    live_pid,
    port_in_use,
    process_alive,
    rotate_log,
    spawn_detached,
    stop_process,
    tail,
    who_listens,
)


@dataclass(frozen=True)
class ServiceStatus:
    """One service as ``up``/``status`` saw it."""

    name: str
    address: str
    answering: bool
    detail: str
    pid: int | None = None
    version: str | None = None
    state: str = ""
    log_file: Path | None = None
    seconds: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": self.address,
            "answering": self.answering,
            "detail": self.detail,
            "pid": self.pid,
            "version": self.version,
            "state": self.state,
            "log_file": str(self.log_file) if self.log_file else None,
            "seconds": self.seconds,
            **self.extra,
        }


class LocalService(ABC):
    """A service of the local stack, run from files under ``settings.home``."""

    name: str
    stop_signal: signal.Signals = signal.SIGTERM

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home.resolve()

    # -- files ---------------------------------------------------------------------
    @property
    def pid_file(self) -> Path:
        return self.home / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / f"{self.name}.log"

    # -- what subclasses define ----------------------------------------------------
    @property
    @abstractmethod
    def address(self) -> str:
        """host:port clients use."""

    @property
    @abstractmethod
    def ports(self) -> Sequence[tuple[str, int]]:
        """Every (host, port) the service binds; they must be free before a start."""

    @abstractmethod
    def looks_like_ours(self, cmdline: Sequence[str]) -> bool:
        """True if ``cmdline`` is the command :meth:`command` builds for this home."""

    @abstractmethod
    def prepare(self) -> None:
        """One-time and per-start work before spawning (jars, initdb, config files)."""

    @abstractmethod
    def command(self) -> list[str]:
        """argv of the service process."""

    @abstractmethod
    async def probe(self) -> str | None:
        """``None`` when the service answers a real request; else why not."""

    async def bootstrap(self, reason: str) -> str | None:
        """Called while starting when :meth:`probe` says ``reason``: fix what a first
        start must create (e.g. a role) and return the new reason, or ``None``."""
        return reason

    def version(self) -> str | None:
        return None

    def run_as(self) -> str | None:
        """OS user the process runs as (``None``: ours)."""
        return None

    # -- lifecycle -----------------------------------------------------------------
    def running_pid(self) -> int | None:
        return live_pid(self.pid_file, self.looks_like_ours)

    def start(self) -> int:
        """Spawn the service detached and record its pid. Caller holds the stack lock."""
        for host, port in self.ports:
            if port_in_use(host, port):
                raise StackError(
                    f"{self.name}: {host}:{port} is already in use by {who_listens(port)}, "
                    f"which `apex dev up` did not start. Stop it, or pick other ports "
                    f"(see `apex dev settings`)."
                )
        rotate_log(self.log_file)
        pid = spawn_detached(
            self.command(), log_file=self.log_file, cwd=self.home, user=self.run_as()
        )
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{pid}\n")
        return pid

    async def wait_ready(self, pid: int, within: float) -> float:
        """Wait until the service answers; return the seconds it took."""
        started = time.monotonic()
        reason: str | None = "not probed yet"
        while time.monotonic() - started < within:
            reason = await self.probe()
            if reason is not None:
                reason = await self.bootstrap(reason)
            if reason is None:
                return time.monotonic() - started
            # Alive is enough here: the pid is the one just spawned, and until the
            # spawning shell's child has exec'd, its command line is the shell's.
            # `running_pid` would call that "not ours" and drop the pid file,
            # leaving a service that answers a moment later and nothing to stop it by.
            if not process_alive(pid):
                self.pid_file.unlink(missing_ok=True)
                raise StackError(
                    f"{self.name} exited while starting ({reason}).\n"
                    f"Last lines of {self.log_file}:\n{tail(self.log_file)}"
                )
            await asyncio.sleep(0.25)
        raise StackError(
            f"{self.name} (pid {pid}) did not answer on {self.address} within {within:.0f} s "
            f"({reason}). It is still running; `apex dev down` stops it, APEX_STACK_TIMEOUT "
            f"waits longer.\nLast lines of {self.log_file}:\n{tail(self.log_file)}"
        )

    def stop(self, timeout: float = 30.0) -> str:
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        outcome = stop_process(
            pid, self.looks_like_ours, stop_signal=self.stop_signal, timeout=timeout
        )
        self.pid_file.unlink(missing_ok=True)
        return f"{outcome}, pid {pid}"

    async def status(self) -> ServiceStatus:
        pid = self.running_pid()
        reason = await self.probe()
        if reason is None:
            detail = "answering" if pid else "answering, but not started by `apex dev up`"
        else:
            detail = reason if pid else "down"
        return ServiceStatus(
            name=self.name,
            address=self.address,
            answering=reason is None,
            detail=detail,
            pid=pid,
            version=self.version() if reason is None else None,
            state="running" if pid else "stopped",
            log_file=self.log_file,
        )
