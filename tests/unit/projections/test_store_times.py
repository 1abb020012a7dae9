"""The statement backend sends row times as epoch milliseconds: only those a datetime holds."""

from __future__ import annotations

import pytest

from apex.projections import rows as r
from apex.projections.store import _check_times

_MIN_MS, _MAX_MS = -62_135_596_800_000, 253_402_300_799_999
"""The times a datetime holds (years 1 to 9999)."""


def test_times_a_datetime_holds_go_as_they_are() -> None:
    _check_times("runs", "started_at", [_MIN_MS, None, 0, 1_700_000_000_123, _MAX_MS])
    _check_times("runs", "started_at", [None, None])
    _check_times("runs", "started_at", [])


@pytest.mark.parametrize("at_ms", [_MIN_MS - 1, _MAX_MS + 1, 10**18])
def test_a_time_no_datetime_holds_is_refused_as_from_ms_refuses_it(at_ms: int) -> None:
    with pytest.raises(OverflowError):
        r.from_ms(at_ms)
    with pytest.raises(OverflowError, match=rf"steps.finished_at: time {at_ms} ms is outside"):
        _check_times("steps", "finished_at", [1, None, at_ms, 2])
