"""A service's start, against real processes (no Kafka or PostgreSQL needed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest

from apex.config import Settings
from apex.devstack.process import StackError
from apex.devstack.service import LocalService


class _Sleeper(LocalService):
    """A shell for ``exec_after`` s, then ``sleep``; it answers after ``ready_after`` s."""

    name = "sleeper"

    def __init__(self, settings: Settings, *, exec_after: float, ready_after: float) -> None:
        super().__init__(settings)
        self.exec_after = exec_after
        self.ready_after = ready_after
        self.started = 0.0

    @property
    def address(self) -> str:
        return "nowhere"

    @property
    def ports(self) -> Sequence[tuple[str, int]]:
        return []

    def looks_like_ours(self, cmdline: Sequence[str]) -> bool:
        return bool(cmdline) and Path(cmdline[0]).name == "sleep"

    def prepare(self) -> None:
        self.started = time.monotonic()

    def command(self) -> list[str]:
        return ["/bin/sh", "-c", f"sleep {self.exec_after}; exec sleep 30"]

    async def probe(self) -> str | None:
        return None if time.monotonic() - self.started >= self.ready_after else "not yet"


def _settings(tmp_path: Path) -> Settings:
    return Settings.from_env(home=tmp_path)


def test_a_service_not_yet_in_its_own_command_is_starting_not_exited(tmp_path: Path) -> None:
    svc = _Sleeper(_settings(tmp_path), exec_after=0.6, ready_after=1.0)
    svc.prepare()
    pid = svc.start()
    try:
        # Its command line is still the shell's: not "ours" yet, but alive.
        assert not svc.looks_like_ours(psutil.Process(pid).cmdline())
        asyncio.run(svc.wait_ready(pid, within=10))
        assert svc.running_pid() == pid, "the pid file must still name the service"
    finally:
        svc.stop(timeout=5)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_service_that_exits_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    svc = _Sleeper(_settings(tmp_path), exec_after=0.6, ready_after=60)
    svc.command = lambda: ["/bin/sh", "-c", "echo 'no such config' >&2; exit 3"]  # type: ignore[method-assign]
    svc.prepare()
    pid = svc.start()
    with pytest.raises(StackError, match=r"sleeper exited while starting[\s\S]*no such config"):
        asyncio.run(svc.wait_ready(pid, within=10))
    assert not svc.pid_file.exists()
