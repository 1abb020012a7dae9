"""The statement backend's joined-text columns: which values go as text, which cannot."""

from __future__ import annotations

from apex.projections.store import _joined


def test_text_values_join_with_the_unit_separator_and_null_as_the_record_separator() -> None:
    assert _joined(["a", "", None, "ü ✓"], text=True) == "a\x1f\x1f\x1e\x1fü ✓"
    assert _joined([None], text=True) == "\x1e"
    assert _joined([], text=True) == ""


def test_integers_join_as_digits() -> None:
    assert _joined([1, -2, None, 10**15], text=False) == "1\x1f-2\x1f\x1e\x1f1000000000000000"


def test_a_value_the_text_cannot_carry_asks_for_arrays() -> None:
    assert _joined(["a\x1fb"], text=True) is None
    assert _joined(["\x1e", None], text=True) is None  # the NULL mark as a value
    assert _joined(["x\x1ey"], text=True) is None
    assert _joined([""], text=True) is None  # string_to_array('') is the empty array
    assert _joined(["a", 1], text=True) is None  # not text: the array codec says why
