"""Transaction protocol v2's pieces that need no broker: reading the broker's features."""

from __future__ import annotations

from aiokafka.protocol.types import Int64

from apex.kafka.txn_v2 import (
    _FINALIZED_FEATURE,
    ApiVersionsResponse_v3,
    EndTxnRequest_v5,
    finalized_features,
)


def _answer(tags: dict[int, bytes]) -> ApiVersionsResponse_v3:
    return ApiVersionsResponse_v3(0, [], 0, tags)


def test_the_finalized_features_are_read_from_their_tagged_field() -> None:
    features = [("metadata.version", 27, 27, {}), ("transaction.version", 2, 2, {})]
    raw = _FINALIZED_FEATURE.encode(features)

    assert finalized_features(_answer({1: Int64.encode(7), 2: raw})) == {
        "metadata.version": 27,
        "transaction.version": 2,
    }
    # Without a features epoch (or with -1), the list is not to be trusted (KIP-584).
    assert finalized_features(_answer({2: raw})) == {}
    assert finalized_features(_answer({1: Int64.encode(-1), 2: raw})) == {}


def test_a_broker_that_finalized_nothing_has_no_features() -> None:
    assert finalized_features(_answer({})) == {}
    # Supported (tag 0) is not finalized: a broker able to do v2 has not turned it on.
    assert finalized_features(_answer({0: _FINALIZED_FEATURE.encode([])})) == {}


def test_end_txn_v5_is_written_as_kafka_reads_it() -> None:
    request = EndTxnRequest_v5("t", 42, 7, True, {})

    # Kafka's EndTxnRequest v5 (flexible): compact string, int64, int16, bool, no tags.
    assert request.encode() == bytes([0x02, ord("t"), 0, 0, 0, 0, 0, 0, 0, 42, 0, 7, 1, 0])
    assert EndTxnRequest_v5.FLEXIBLE_VERSION
