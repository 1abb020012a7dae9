"""The rebuild's worker side: the shared partition queue (each partition to exactly one
taker, then all stop) and the collector thresholds of a replay."""

from __future__ import annotations

import gc
import queue
import threading

from apex.projections.replay import fewer_collections, taken_from


def test_takers_share_the_partitions_once_each_and_leave_the_end_marker() -> None:
    work: queue.Queue[int | None] = queue.Queue()
    taken: list[list[int]] = [[], [], []]

    def take(i: int) -> None:
        taken[i].extend(taken_from(work))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(3)]
    for thread in threads:  # they wait for work, as worker processes do
        thread.start()
    for partition in range(12):
        work.put(partition)
    work.put(None)
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()

    assert sorted(p for mine in taken for p in mine) == list(range(12))
    assert work.get_nowait() is None and work.empty()  # the marker stays for late takers
    assert list(taken_from(work_with_marker_only())) == []


def work_with_marker_only() -> queue.Queue[int | None]:
    work: queue.Queue[int | None] = queue.Queue()
    work.put(None)
    return work


def test_a_replay_collects_less_often_and_gives_the_thresholds_back() -> None:
    before = gc.get_threshold()
    with fewer_collections():
        assert gc.get_threshold()[0] > before[0]
    assert gc.get_threshold() == before
