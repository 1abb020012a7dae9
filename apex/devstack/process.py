"""Detached processes owned by the local stack: spawn, pid files, stop, logs.

A service runs detached from the command that started it (new session, parent
exits at once), so it outlives ``apex dev up`` and a test run. Its pid lives in
a pid file under ``var/run/``; nothing is ever signalled unless that pid is
alive *and* its command line is the one we started (pids get reused).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import psutil


class StackError(RuntimeError):
    """A local service could not be prepared, started, reached or stopped.

    The message says what went wrong, where to look, and what to do.
    """


CmdlineMatcher = Callable[[Sequence[str]], bool]

# The service is started by a throw-away shell that backgrounds it and exits, so
# the service is re-parented to init: no zombie is left in a long-lived parent
# (a pytest session) and nothing ties its life to ours. The shell's stdout is the
# log file (inherited by the service); it reports the service's pid on stderr.
_SPAWN_SCRIPT = '"$@" </dev/null 2>&1 & echo $! >&2'


def spawn_detached(
    argv: Sequence[str],
    *,
    log_file: Path,
    cwd: Path,
    user: str | None = None,
) -> int:
    """Start ``argv`` in its own session, output appended to ``log_file``; return its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        shell = subprocess.run(
            ["/bin/sh", "-c", _SPAWN_SCRIPT, "apex-spawn", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.PIPE,
            cwd=cwd,
            user=user,
            start_new_session=True,
            check=False,
            text=True,
            timeout=30,
        )
    reported = shell.stderr.strip()
    if shell.returncode != 0 or not reported.isdigit():
        raise StackError(f"could not start {argv[0]}: {reported or 'no pid reported'}")
    return int(reported)


def read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def live_pid(pid_file: Path, looks_like_ours: CmdlineMatcher) -> int | None:
    """The pid in ``pid_file`` if that process is alive and is ours; else ``None``.

    A pid file whose process is gone (or is now someone else's) is removed.
    """
    pid = read_pid(pid_file)
    if pid is None:
        return None
    if process_matches(pid, looks_like_ours):
        return pid
    pid_file.unlink(missing_ok=True)
    return None


def process_alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) process, whatever its command."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.AccessDenied:
        return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def process_matches(pid: int, looks_like_ours: CmdlineMatcher) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return bool(looks_like_ours(proc.cmdline()))
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def stop_process(
    pid: int, looks_like_ours: CmdlineMatcher, *, stop_signal: signal.Signals, timeout: float
) -> str:
    """Ask ``pid`` to stop, wait ``timeout`` s, then kill its process group.

    Returns what happened, for the user. Refuses to touch a process that is not ours.
    """
    if not process_matches(pid, looks_like_ours):
        return "not running"
    proc = psutil.Process(pid)
    proc.send_signal(stop_signal)
    try:
        proc.wait(timeout)
        return f"stopped ({stop_signal.name})"
    except psutil.TimeoutExpired:
        pass
    # The service was started in a session of its own (start_new_session), so its
    # process group holds only it and its children (e.g. PostgreSQL backends).
    with contextlib.suppress(ProcessLookupError):
        group = os.getpgid(pid)
        if group != os.getpgid(0) and os.getsid(pid) != os.getsid(0):
            os.killpg(group, signal.SIGKILL)
        else:
            proc.kill()
    with contextlib.suppress(psutil.TimeoutExpired):
        proc.wait(5)
    return f"killed (SIGKILL after {timeout:.0f} s without stopping on {stop_signal.name})"


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (empty if it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def rotate_log(path: Path) -> None:
    """Keep the previous run's log as ``<name>.1`` so each start reads its own log."""
    if path.exists():
        path.replace(path.with_name(path.name + ".1"))


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def listeners_of(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket ``pid`` listens on."""
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return [(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]


def who_listens(port: int) -> str:
    """Best effort description of the process listening on ``port``."""
    with contextlib.suppress(psutil.AccessDenied, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                with contextlib.suppress(psutil.Error):
                    cmd = " ".join(psutil.Process(conn.pid).cmdline())[:120]
                    return f"pid {conn.pid}: {cmd}"
                return f"pid {conn.pid}"
    return "an unknown process"


class StackLock:
    """Serialises ``up``/``down`` across processes (two test runs, a CLI and a test run)."""

    def __init__(self, path: Path, timeout: float = 300.0) -> None:
        self.path = path
        self.timeout = timeout
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "w")  # noqa: SIM115 - held until release()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    fh.close()
                    raise StackError(
                        f"another `apex dev` command holds {self.path}; waited {self.timeout:.0f} s"
                    ) from None
                time.sleep(0.2)
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
