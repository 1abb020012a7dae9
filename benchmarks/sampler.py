"""CPU time and memory of the processes a scenario runs, over its measured phase."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psutil


class Sampler:
    """``Sampler({"orchestrator": pid}, trees={"postgres": pid})``; ``begin()``, ``end()``.

    A *tree* counts the process and its children (PostgreSQL's backends), each
    child from zero if it appeared during the phase.
    """

    def __init__(self, pids: dict[str, int], trees: dict[str, int] | None = None) -> None:
        self._pids = dict(pids)
        self._trees = dict(trees or {})
        self._cpu0: dict[str, dict[int, float]] = {}
        self._t0 = 0.0

    def begin(self) -> None:
        self._t0 = time.perf_counter()
        self._cpu0 = {name: self._cpu(name) for name in (*self._pids, *self._trees)}

    def end(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._t0
        out: dict[str, Any] = {}
        for name in (*self._pids, *self._trees):
            now = self._cpu(name)
            busy = sum(cpu - self._cpu0[name].get(pid, 0.0) for pid, cpu in now.items())
            figures: dict[str, Any] = {
                "cpu_s": round(busy, 2),
                "cpu_share_of_one_core": round(busy / wall, 3) if wall else None,
            }
            if name in self._pids:
                with contextlib.suppress(psutil.Error):
                    rss = psutil.Process(self._pids[name]).memory_info().rss
                    figures["rss_mb"] = round(rss / 2**20, 1)
            out[name] = figures
        return out

    def _cpu(self, name: str) -> dict[int, float]:
        pid = self._pids.get(name) or self._trees[name]
        found: dict[int, float] = {}
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)] if name in self._trees else [root]
            for proc in members:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    found[proc.pid] = float(times.user + times.system)
        return found
