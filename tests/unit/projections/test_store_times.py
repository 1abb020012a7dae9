"""The statement backend sends row times as epoch milliseconds: exactly, or not at all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apex.projections import rows as r
from apex.projections.store import _epoch_ms


def test_a_row_time_goes_as_its_exact_epoch_milliseconds() -> None:
    for ms in (0, 1, 999, 1_700_000_000_123, 4_102_444_800_001):
        assert _epoch_ms(r.from_ms(ms)) == ms
        assert _epoch_ms(r.from_ms(ms)) == ms  # the remembered answer too
    assert _epoch_ms(None) is None


def test_a_time_finer_than_a_millisecond_is_refused_not_cut() -> None:
    finer = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(microseconds=1)
    with pytest.raises(ValueError, match="not a whole millisecond"):
        _epoch_ms(finer)
