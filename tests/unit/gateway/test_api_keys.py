"""API keys: the format that finds the row, and the salted hash that is all that is stored."""

from __future__ import annotations

import pytest

from apex.gateway.keys import _digest, _scopes, parse_key

SECRET = "A" * 43


def test_a_well_formed_key_splits_into_id_and_secret() -> None:
    assert parse_key(f"apex_0123456789ab_{SECRET}") == ("0123456789ab", SECRET)
    assert parse_key(f"  apex_0123456789ab_{'_-' * 21}a ") == ("0123456789ab", "_-" * 21 + "a")


@pytest.mark.parametrize(
    "presented",
    ["", "apex_", f"apex_0123456789AB_{SECRET}", f"apex_0123456789ab_{SECRET}x",
     f"key_0123456789ab_{SECRET}", f"apex_0123456789ab_{'A' * 42}=", "apex_0123456789ab\x00"],
)  # fmt: skip
def test_anything_else_is_not_a_key(presented: str) -> None:
    assert parse_key(presented) is None


def test_the_digest_depends_on_the_salt() -> None:
    assert _digest(b"1" * 16, SECRET) != _digest(b"2" * 16, SECRET)
    assert len(_digest(b"1" * 16, SECRET)) == 32


def test_an_unknown_scope_is_named() -> None:
    with pytest.raises(ValueError, match="unknown scope 'write'"):
        _scopes(["read", "write"])
