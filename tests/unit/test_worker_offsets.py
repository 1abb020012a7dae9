"""At-least-once bookkeeping: a partition commits only below its lowest unfinished offset."""

from __future__ import annotations

from apex.worker.offsets import PartitionOffsets


def test_nothing_received_nothing_to_commit() -> None:
    assert PartitionOffsets().committable() is None


def test_commit_stops_at_the_lowest_unfinished_offset() -> None:
    offsets = PartitionOffsets()
    for offset in (10, 11, 12, 13):
        offsets.received(offset)
    offsets.done(11)
    offsets.done(13)
    assert offsets.committable() == 10  # 10 still runs: 11 and 13 must wait for it
    offsets.done(10)
    assert offsets.committable() == 12
    offsets.done(12)
    assert offsets.committable() == 14


def test_gaps_between_offsets_do_not_hold_the_commit_back() -> None:
    offsets = PartitionOffsets()
    offsets.received(3)
    offsets.received(7)  # 4..6: transaction markers or aborted records, never delivered
    offsets.done(3)
    offsets.done(7)
    assert offsets.committable() == 8


def test_committed_offset_is_not_committed_again() -> None:
    offsets = PartitionOffsets()
    offsets.received(0)
    offsets.done(0)
    assert offsets.committable() == 1
    offsets.committed(1)
    assert offsets.committable() is None
    offsets.received(1)
    assert offsets.committable() is None  # 1 is running: nothing new is done
    offsets.done(1)
    assert offsets.committable() == 2


def test_unfinished_records_are_never_committed_past() -> None:
    offsets = PartitionOffsets()
    for offset in range(5):
        offsets.received(offset)
    for offset in (0, 1, 3, 4):
        offsets.done(offset)
    assert offsets.committable() == 2
    assert offsets.pending == 1
