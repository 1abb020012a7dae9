"""Many tasks' wake-ups on one event-loop timer.

Each task attempt wants to wake up later (its start report, its next
heartbeat, its liveness deadline), and nearly always the agent finishes first
and the wake-up is dropped. An event-loop timer per attempt (``call_at``,
then ``cancel``) was a measurable part of the worker's CPU per step; an entry
in this heap costs a list and a push. The loop keeps a single timer, at the
earliest wake-up that is still wanted.

A wake-up runs at its time or a little later (never earlier), in the context
(:mod:`contextvars`) it was set in, like a callback of ``loop.call_at``.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("apex.worker")

Alarm = list[Any]
"""``[when, sequence, callback, context]``; a dropped alarm's callback is None.

A list, not a class: the heap compares its entries in C, by time, then sequence.
"""


class Alarms:
    """Wake-ups on the running loop; see the module documentation."""

    def __init__(self) -> None:
        self._heap: list[Alarm] = []
        self._sequence = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def call_at(self, when: float, callback: Callable[[], None]) -> Alarm:
        """Call ``callback()`` at loop time ``when``, unless :meth:`drop` comes first."""
        alarm = [when, next(self._sequence), callback, contextvars.copy_context()]
        heapq.heappush(self._heap, alarm)
        if self._timer is None or when < self._timer.when():
            self._arm(asyncio.get_running_loop())
        return alarm

    @staticmethod
    def drop(alarm: Alarm) -> None:
        """Forget ``alarm``; it stays in the heap until it comes to the top."""
        alarm[2] = alarm[3] = None

    def __len__(self) -> int:
        """Alarms not yet called or dropped (for tests)."""
        return sum(1 for alarm in self._heap if alarm[2] is not None)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        heap = self._heap
        while heap and heap[0][2] is None:  # dropped ones never cost a wake-up
            heapq.heappop(heap)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if heap:
            self._timer = loop.call_at(heap[0][0], self._ring)

    def _ring(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, callback, context = heapq.heappop(heap)
            if callback is None:
                continue
            try:
                context.run(callback)
            except Exception:  # as the loop does with a failing callback: log, go on
                log.exception("wake-up %r failed", callback)
        if self._timer is None:  # a callback may have armed it already
            self._arm(loop)
