"""``apex.audit.offsets``: which records of a Fetch answer a run's history takes."""

from __future__ import annotations

from aiokafka import TopicPartition
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from apex.audit.offsets import FetchedRecord, _take

TP = TopicPartition("apex.events", 0)


def batch(base: int, count: int, *, transactional: bool = False, producer_id: int = -1) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=transactional,
        producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=0 if producer_id >= 0 else -1,
        batch_size=1 << 20,
    )
    for i in range(count):
        builder.append(i, timestamp=1000 + i, key=b"k", value=f"v{base + i}".encode(), headers=[])
    data = bytearray(builder.build())
    data[0:8] = base.to_bytes(8, "big")  # the broker assigns base offsets
    return bytes(data)


def test_take_returns_exactly_the_wanted_offsets_in_order() -> None:
    data = batch(0, 10) + batch(10, 10) + batch(20, 10)
    got: list[FetchedRecord] = []
    want = {3, 12, 29}
    position, passed = _take(TP, data, None, 3, 29, want, [(3, 29)], got)
    assert [r.offset for r in got] == [3, 12, 29]
    assert [r.value for r in got] == [b"v3", b"v12", b"v29"]
    assert position == 30
    assert passed == 27


def test_take_skips_records_before_the_position_and_after_the_last() -> None:
    data = batch(0, 10)
    got: list[FetchedRecord] = []
    position, _ = _take(TP, data, None, 5, 6, {2, 5, 6, 8}, [(5, 6)], got)
    assert [r.offset for r in got] == [5, 6]
    assert position == 10


def test_take_never_returns_a_record_of_an_aborted_transaction() -> None:
    # Producer 7's batch at 10..14 was aborted: a committed reader never sees it.
    data = batch(0, 10) + batch(10, 5, transactional=True, producer_id=7) + batch(15, 5)
    got: list[FetchedRecord] = []
    position, _ = _take(TP, data, [(7, 10)], 0, 19, {4, 12, 16}, [(0, 19)], got)
    assert [r.offset for r in got] == [4, 16]
    assert position == 20
