"""Read-model query helpers that need no database: cursors and filters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from apex.queries import BadCursor, RunInfo, _decode_cursor, _encode_cursor, _split_definition


def _run(started_at: datetime) -> RunInfo:
    return RunInfo("r:1", "triage", 2, "running", {}, None, None, "", started_at, None, None, 3)


def test_a_cursor_is_the_position_of_the_last_row() -> None:
    when = datetime(2024, 5, 1, 10, 0, 0, 123000, tzinfo=UTC)

    assert _decode_cursor(_encode_cursor(_run(when))) == (when, "r:1")


@pytest.mark.parametrize("cursor", ["", "nope", "W10", "WyJ4IiwgMV0", "WyIyMDI0LTA1LTAxIiwgInIiXQ"])
def test_a_cursor_this_module_did_not_write_is_refused(cursor: str) -> None:
    with pytest.raises(BadCursor, match="next_cursor of the previous page"):
        _decode_cursor(cursor)


def test_a_definition_filter_is_a_name_or_name_at_version() -> None:
    assert _split_definition("triage") == ("triage", None)
    assert _split_definition("triage@3") == ("triage", 3)
    assert _split_definition("odd@name@v") == ("odd@name@v", None)


def test_a_run_knows_its_definition_key_and_json_form() -> None:
    when = datetime(2024, 5, 1, tzinfo=UTC)
    data = _run(when).to_dict()

    assert _run(when).definition == "triage@2"
    assert data["started_at"] == "2024-05-01T00:00:00+00:00" and data["steps"] == []
