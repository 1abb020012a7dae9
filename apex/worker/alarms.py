"""Many tasks' wake-ups on one event-loop timer.

Each task attempt wants to wake up later (its start report, its next
heartbeat, its liveness deadline), and nearly always the agent finishes first
and the wake-up is dropped. An event-loop timer per attempt (``call_at``,
then ``cancel``) was a measurable part of the worker's CPU per step; an entry
in this heap costs a list and a push. The loop keeps a single timer, at the
earliest wake-up that is still wanted.

A wake-up runs at its time or a little later (never earlier), in the context
(:mod:`contextvars`) it was set in, like a callback of ``loop.call_at``.

A dropped wake-up stays in the heap until it comes to the top, which for a
far deadline (a quick step with an hour's timeout and no start report) is an
hour away: when dropped entries are most of a large heap, it is rebuilt
without them, so the heap follows the attempts in flight.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

log = logging.getLogger("apex.worker")

COMPACT_AT = 1024
"""Dropped alarms a heap may hold before it is compacted (when they are most of it)."""

Alarm = list[Any]
"""``[when, sequence, callback, context]``; a dropped alarm's callback is None.

A list, not a class: the heap compares its entries in C, by time, then sequence.
"""


class Alarms:
    """Wake-ups on the running loop; see the module documentation."""

    def __init__(self) -> None:
        self._heap: list[Alarm] = []
        self._sequence = itertools.count()
        self._timer: asyncio.Handle | None = None
        self._timer_at = math.inf
        """When the timer rings: kept here, since uvloop arms a time already
        passed as a plain ``Handle``, which has no ``when()``."""
        self._dropped = 0
        """Dropped alarms still in the heap."""

    def call_at(self, when: float, callback: Callable[[], None]) -> Alarm:
        """Call ``callback()`` at loop time ``when``, unless :meth:`drop` comes first."""
        alarm = [when, next(self._sequence), callback, contextvars.copy_context()]
        heapq.heappush(self._heap, alarm)
        if self._timer is None or when < self._timer_at:
            self._arm(asyncio.get_running_loop())
        return alarm

    def drop(self, alarm: Alarm) -> None:
        """Forget ``alarm`` (see the module documentation for when it leaves the heap)."""
        if alarm[2] is None:
            return
        alarm[2] = alarm[3] = None
        self._dropped += 1
        if self._dropped > COMPACT_AT and 2 * self._dropped > len(self._heap):
            # In place: _ring may be walking this very list (a callback can drop).
            self._heap[:] = [entry for entry in self._heap if entry[2] is not None]
            heapq.heapify(self._heap)
            self._dropped = 0

    def __len__(self) -> int:
        """Alarms not yet called or dropped (for tests)."""
        return sum(1 for alarm in self._heap if alarm[2] is not None)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        heap = self._heap
        while heap and heap[0][2] is None:  # dropped ones never cost a wake-up
            heapq.heappop(heap)
            self._dropped -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf
        if heap:
            self._timer_at = heap[0][0]
            self._timer = loop.call_at(self._timer_at, self._ring)

    def _ring(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            callback, context = entry[2], entry[3]
            if callback is None:
                self._dropped -= 1
                continue
            entry[2] = entry[3] = None  # rung: a later drop() of it changes nothing
            try:
                context.run(callback)
            except Exception:  # as the loop does with a failing callback: log, go on
                log.exception("wake-up %r failed", callback)
        if self._timer is None:  # a callback may have armed it already
            self._arm(loop)
