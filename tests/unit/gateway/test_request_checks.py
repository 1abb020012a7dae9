"""What JSON lets through but Avro or PostgreSQL cannot hold is a 422 naming the place."""

from __future__ import annotations

from typing import Any

import pytest

from apex.gateway.errors import MAX_DEPTH, ApiError, check_json
from apex.gateway.settings import GatewaySettings


@pytest.mark.parametrize(
    ("value", "where", "message"),
    [
        ({"a": ["ok", "b\x00"]}, "body.a[1]", "NUL"),
        ({"k\x00": 1}, "body.k\x00", "NUL"),
        ({"a": "\ud800"}, "body.a", "surrogate"),
        ({"a": float("inf")}, "body.a", "finite"),
    ],
)
def test_unstorable_json_is_refused_with_its_place(value: Any, where: str, message: str) -> None:
    with pytest.raises(ApiError) as refused:
        check_json(value, "body")

    assert refused.value.status == 422
    (problem,) = refused.value.problems
    assert problem["where"] == where and message in problem["message"]


def test_nesting_is_bounded() -> None:
    value: Any = "deep"
    for _ in range(MAX_DEPTH + 1):
        value = [value]
    with pytest.raises(ApiError, match="nested too deeply"):
        check_json(value, "body")
    check_json({"a": [1, 2.5, None, True, {"b": "é"}]}, "body")


def test_allowed_topics_come_from_a_comma_separated_setting() -> None:
    options = GatewaySettings.from_env({"APEX_GATEWAY_TOPICS": " shop.orders, ,crm.contacts "})

    assert options.allowed_topics == {"shop.orders", "crm.contacts"}
    assert GatewaySettings.from_env({}).allowed_topics == frozenset()
    with pytest.raises(ValueError, match="APEX_GATEWAY_TOPICS holds 'bad topic'"):
        GatewaySettings.from_env({"APEX_GATEWAY_TOPICS": "ok,bad topic"})
