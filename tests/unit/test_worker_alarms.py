"""Wake-ups of many task attempts on one event-loop timer."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable

from apex.worker.alarms import COMPACT_AT, Alarms

WAIT_S = 5.0


def _ring(rang: list[str], name: str, done: asyncio.Event | None = None) -> Callable[[], None]:
    loop = asyncio.get_running_loop()

    def ring() -> None:
        rang.append(f"{name}@{loop.time():.6f}")
        if done is not None:
            done.set()

    return ring


def _names(rang: list[str]) -> list[str]:
    return [entry.split("@")[0] for entry in rang]


async def test_alarms_ring_in_time_order_and_never_early() -> None:
    loop = asyncio.get_running_loop()
    alarms = Alarms()
    rang: list[str] = []
    done = asyncio.Event()
    start = loop.time()

    alarms.call_at(start + 0.06, _ring(rang, "late", done))
    alarms.call_at(start + 0.02, _ring(rang, "early"))
    alarms.call_at(start + 0.04, _ring(rang, "middle"))
    await asyncio.wait_for(done.wait(), WAIT_S)

    assert _names(rang) == ["early", "middle", "late"]
    times = [float(entry.split("@")[1]) for entry in rang]
    assert all(at >= start + delay for at, delay in zip(times, (0.02, 0.04, 0.06), strict=True))
    assert len(alarms) == 0


async def test_a_dropped_alarm_does_not_ring_and_the_others_still_do() -> None:
    loop = asyncio.get_running_loop()
    alarms = Alarms()
    rang: list[str] = []
    done = asyncio.Event()

    first = alarms.call_at(loop.time() + 0.01, _ring(rang, "dropped"))
    alarms.call_at(loop.time() + 0.03, _ring(rang, "kept", done))
    alarms.drop(first)
    assert len(alarms) == 1
    await asyncio.wait_for(done.wait(), WAIT_S)

    assert _names(rang) == ["kept"]


async def test_an_earlier_alarm_set_later_rings_first() -> None:
    loop = asyncio.get_running_loop()
    alarms = Alarms()
    rang: list[str] = []
    done = asyncio.Event()

    alarms.call_at(loop.time() + 10.0, _ring(rang, "in ten seconds"))
    alarms.call_at(loop.time() + 0.01, _ring(rang, "soon", done))
    await asyncio.wait_for(done.wait(), WAIT_S)

    assert _names(rang) == ["soon"]
    assert len(alarms) == 1


async def test_an_alarm_runs_in_the_context_it_was_set_in() -> None:
    loop = asyncio.get_running_loop()
    alarms = Alarms()
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []
    done = asyncio.Event()

    def ring() -> None:
        seen.append(var.get())
        done.set()

    async def set_alarm() -> None:
        var.set("the task's")
        alarms.call_at(loop.time() + 0.01, ring)

    await asyncio.create_task(set_alarm())
    await asyncio.wait_for(done.wait(), WAIT_S)

    assert seen == ["the task's"]


async def test_a_failing_alarm_does_not_stop_the_others() -> None:
    loop = asyncio.get_running_loop()
    alarms = Alarms()
    rang: list[str] = []
    done = asyncio.Event()

    def fail() -> None:
        raise RuntimeError("boom")

    when = loop.time() + 0.01
    alarms.call_at(when, fail)
    alarms.call_at(when, _ring(rang, "after", done))
    await asyncio.wait_for(done.wait(), WAIT_S)

    assert _names(rang) == ["after"]


async def test_dropped_far_alarms_do_not_pile_up_in_the_heap() -> None:
    """Quick attempts with far deadlines: the heap follows the alarms still wanted."""
    loop = asyncio.get_running_loop()
    alarms = Alarms()
    rang: list[str] = []
    kept = alarms.call_at(loop.time() + 0.01, _ring(rang, "kept"))
    for _ in range(20 * COMPACT_AT):
        alarms.drop(alarms.call_at(loop.time() + 3600, _ring(rang, "far")))
    assert len(alarms._heap) <= 2 * COMPACT_AT + 2
    assert len(alarms) == 1
    await asyncio.sleep(0.05)
    assert _names(rang) == ["kept"]
    alarms.drop(kept)  # already rung: nothing to forget
    assert len(alarms) == 0


def test_an_alarm_set_in_the_past_then_another_on_uvloop() -> None:
    # uvloop arms a time already passed as a plain Handle, without when(): the
    # second alarm must still be compared with the first (it raised AttributeError).
    import uvloop

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        alarms = Alarms()
        rang: list[str] = []
        done = asyncio.Event()
        alarms.call_at(loop.time() - 1.0, _ring(rang, "past"))
        alarms.call_at(loop.time() + 0.02, _ring(rang, "soon", done))
        await asyncio.wait_for(done.wait(), WAIT_S)
        return rang

    assert _names(uvloop.run(main())) == ["past", "soon"]
