"""How Apex's long-running processes run their coroutine: the event loop and the collector.

The orchestrator, the timers, the trigger service, the projector and the
workers spend much of their CPU in the event loop itself at low load: a hop
(a report in, one transaction out) takes ~30 turns of the loop through
aiokafka's tasks, each a round of Python in asyncio's loop. uvloop runs the loop
in C (libuv). Measured at chain5 with one run at a time, 7 interleaved rounds:
orchestrator CPU per step -17 %, worker -15 %, step-to-step p50 9.8 -> 8.7 ms
(on a loaded machine; benchmarks/RESULTS.md). At 1,000 runs, where a turn
handles many records, it made no difference. ``APEX_EVENT_LOOP=asyncio`` runs
the standard library's loop instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from apex import gcpolicy
from apex.config import Settings

T = TypeVar("T")

EVENT_LOOPS: Final = ("uvloop", "asyncio")

log = logging.getLogger("apex.service")


def run(main: Coroutine[Any, Any, T], settings: Settings) -> T:
    """Run a service's ``main`` to its end on the configured loop, with the services' GC policy."""
    factory = loop_factory(settings.event_loop)
    gcpolicy.tune_for_service()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory ``APEX_EVENT_LOOP`` names; ``None``: asyncio's default."""
    if name not in EVENT_LOOPS:
        raise ValueError(f"APEX_EVENT_LOOP={name!r}: use one of {', '.join(EVENT_LOOPS)}")
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:  # not built for this platform (Windows): the standard loop serves
        log.warning("APEX_EVENT_LOOP=uvloop but uvloop is not installed: running on asyncio's")
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
