"""Reading exact offsets: where the reader seeks and where it reads through."""

from __future__ import annotations

from apex.kafka.event_log import _segments


def test_offsets_closer_than_the_gap_are_read_in_one_segment() -> None:
    assert _segments([3, 5, 9, 400, 401, 2000], gap=10) == [[3, 5, 9], [400, 401], [2000]]


def test_a_gap_of_zero_seeks_to_every_offset_that_is_not_the_next_one() -> None:
    assert _segments([3, 4, 6, 7, 8], gap=0) == [[3, 4], [6, 7, 8]]


def test_one_offset_is_one_segment() -> None:
    assert _segments([42], gap=500) == [[42]]
