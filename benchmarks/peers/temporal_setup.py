"""Temporal's dev server, built from the Go module proxy and cached under var/peers/.

    python -m benchmarks.peers.temporal_setup build   # go install, once
    python -m benchmarks.peers.temporal_setup serve   # run it in the foreground

The CLI is pinned to v1.5.1: later tags carry a ``replace`` directive in their
go.mod, which ``go install pkg@version`` refuses. ``temporal server start-dev``
is the single-binary server with an in-memory SQLite store (not durable across
restarts — a point in its favour in a benchmark), bound to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from apex.config import REPO_ROOT
from benchmarks import procs

CLI_MODULE = "github.com/temporalio/cli/cmd/temporal"
CLI_VERSION = "v1.5.1"
CACHE = REPO_ROOT / "var" / "peers"
BINARY = CACHE / "bin" / "temporal"
BUILD_TIMEOUT_S = 1800
HOST = "127.0.0.1"
PORT = 17233
"""Frontend (gRPC) port; the server's other ports are the next few."""


class TemporalUnavailable(RuntimeError):
    """The dev server cannot be built or started; the message says why."""


def build(timeout_s: float = BUILD_TIMEOUT_S) -> Path:
    """``GOBIN=var/peers/bin go install ...@v1.5.1`` unless the binary is cached."""
    if BINARY.exists():
        return BINARY
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if go is None:
        raise TemporalUnavailable(
            "Go is not installed (needed once to build the Temporal CLI from the Go module proxy)"
        )
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    log = CACHE / "go-install.log"
    env = {**os.environ, "GOBIN": str(BINARY.parent), "GOFLAGS": "-mod=mod"}
    with log.open("ab") as out:
        try:
            done = subprocess.run(
                [go, "install", f"{CLI_MODULE}@{CLI_VERSION}"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TemporalUnavailable(
                f"go install {CLI_MODULE}@{CLI_VERSION} took longer than {timeout_s:.0f} s "
                f"(log: {log})"
            ) from None
    if done.returncode != 0 or not BINARY.exists():
        raise TemporalUnavailable(
            f"go install {CLI_MODULE}@{CLI_VERSION} failed (exit {done.returncode}); "
            f"last lines of {log}:\n{procs.tail(log)}"
        )
    return BINARY


def cli_version(binary: Path = BINARY) -> str:
    """``temporal --version``: the CLI's and the embedded server's versions."""
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        return f"unknown ({exc})"
    return done.stdout.strip() or done.stderr.strip()


@dataclass
class DevServer:
    address: str
    pid: int
    version: str


@contextlib.contextmanager
def dev_server(log_dir: Path, port: int = PORT, ready_s: float = 60.0) -> Iterator[DevServer]:
    """Build if needed, start ``temporal server start-dev`` on loopback, stop it after."""
    binary = build()
    if _port_in_use(port):
        raise TemporalUnavailable(
            f"port {HOST}:{port} is taken (another Temporal server?); stop it or free the port"
        )
    argv = [
        str(binary), "server", "start-dev",
        "--ip", HOST, "--port", str(port),
        "--ui-port", str(port + 1), "--http-port", str(port + 2),
        "--metrics-port", str(port + 3),
        "--headless", "--log-level", "warn",
    ]  # fmt: skip
    proc = procs.spawn(argv, name="temporal-server", log_dir=log_dir)
    try:
        deadline = time.monotonic() + ready_s
        while not _port_in_use(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise TemporalUnavailable(
                    f"temporal server start-dev did not listen on {HOST}:{port} within "
                    f"{ready_s:.0f} s (exit code {proc.poll()}); last lines of its log:\n"
                    f"{procs.tail(log_dir / 'temporal-server.log')}"
                )
            time.sleep(0.2)
        version = f"CLI {CLI_VERSION} ({cli_version(binary)})"
        yield DevServer(f"{HOST}:{port}", proc.pid, version)
    finally:
        procs.stop(proc)


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["build", "serve"])
    args = parser.parse_args()
    try:
        binary = build()
        print(f"{binary}: {cli_version(binary)}")
        if args.action == "serve":
            with dev_server(procs.WORK_DIR / "temporal") as server:
                print(f"Temporal dev server on {server.address} (pid {server.pid}); Ctrl-C stops")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
    except TemporalUnavailable as exc:
        print(f"Temporal unavailable: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
