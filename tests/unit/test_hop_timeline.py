"""The hop breakdown cuts each hop at its requests, and leaves out a hop it cannot follow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.hop_timeline import (
    SEGMENTS,
    SEGMENTS_V2,
    breakdown,
    hops,
    load,
    request_name,
    table,
)

MS = 0.001


def one_hop(t: float) -> tuple[list[tuple[str, float, float]], list[tuple[str, float, float]]]:
    """A hop from ``t`` (the agent returned) with known segments, in ms: 0.5 report,
    1.5 to the orchestrator, 1 deciding, 0.8 AddPartitions, 0.1, 1.6 Produce, 0.2,
    0.9 EndTxn, 1.4 to the worker's poll, 0.3 to the agent: 8.3 in all."""
    at = t
    marks = []
    for step in (0.5, 1.5, 1.0, 0.8, 0.1, 1.6, 0.2, 0.9, 1.4, 0.3):
        marks.append(at)
        at += step * MS
    marks.append(at)
    finished, report, command, add_sent, add_done, produce_sent, produce_done = marks[:7]
    end_sent, end_done, poll, arrived = marks[7:]
    worker = [
        ("Produce", report, report + 0.7 * MS),
        ("poll", poll, 1),
        ("arrived", arrived, finished),
        ("Fetch", poll - 20 * MS, poll - 0.05 * MS),  # not part of any segment
    ]
    orchestrator = [
        ("poll", command, 1),
        ("AddPartitionsToTxn", add_sent, add_done),
        ("Produce", produce_sent, produce_done),
        ("EndTxn", end_sent, end_done),
    ]
    return orchestrator, worker


def test_each_hop_is_cut_at_its_requests_and_the_segments_add_up() -> None:
    o1, w1 = one_hop(100.0)
    o2, w2 = one_hop(100.050)

    found, left_out = hops(o1 + o2, w1 + w2)

    assert left_out == 0 and len(found) == 2
    expected = [0.5, 1.5, 1.0, 0.8, 0.1, 1.6, 0.2, 0.9, 1.4, 0.3]
    for segments in found:
        assert [round(s / MS, 6) for s in segments] == expected
    result = breakdown(o1 + o2, w1 + w2)
    rows = {row["segment"]: row for row in result["segments"]}
    assert rows["hop"]["p50_ms"] == pytest.approx(8.3)
    assert rows["Produce"]["mean_ms"] == pytest.approx(1.6)
    assert result["round_trips_mean_ms"] == pytest.approx(0.8 + 1.6 + 0.9)
    assert [row["segment"] for row in result["segments"]] == [n for n, _ in SEGMENTS] + ["hop"]
    assert (result["transaction_protocol"], result["round_trips"]) == (1, 3)


def test_a_hop_of_transaction_protocol_v2_has_no_add_partitions_segments() -> None:
    orchestrator, worker = one_hop(100.0)
    # v2: no AddPartitionsToTxn; the Produce goes where it went (1.9 ms after deciding began).
    v2 = [e for e in orchestrator if e[0] != "AddPartitionsToTxn"]

    found, left_out = hops(v2, worker)
    result = breakdown(v2, worker)

    assert left_out == 0
    assert [round(s / MS, 6) for s in found[0]] == [0.5, 1.5, 1.9, 1.6, 0.2, 0.9, 1.4, 0.3]
    assert [row["segment"] for row in result["segments"]] == [n for n, _ in SEGMENTS_V2] + ["hop"]
    assert (result["transaction_protocol"], result["round_trips"]) == (2, 2)
    assert result["round_trips_mean_ms"] == pytest.approx(1.6 + 0.9)


def test_requests_of_either_protocol_are_named_alike() -> None:
    from aiokafka.protocol.transaction import EndTxnRequest

    from apex.kafka.txn_v2 import EndTxnV5Request, ProduceV12Request

    assert request_name(ProduceV12Request("t", -1, 1000, {})) == "Produce"
    assert request_name(EndTxnV5Request("t", 1, 0, True)) == "EndTxn"
    assert request_name(EndTxnRequest("t", 1, 0, True)) == "EndTxn"


def test_a_hop_whose_report_went_before_its_step_finished_is_left_out() -> None:
    orchestrator, worker = one_hop(100.0)
    # The step "finished" after the last report was sent: that report is another hop's.
    late = [("arrived", e[1], e[1] - 0.1 * MS) if e[0] == "arrived" else e for e in worker]

    found, left_out = hops(orchestrator, late)

    assert (found, left_out) == ([], 1)


def test_a_hop_without_a_transaction_before_it_is_left_out() -> None:
    orchestrator, worker = one_hop(100.0)

    found, left_out = hops([e for e in orchestrator if e[0] != "EndTxn"], worker)

    assert (found, left_out) == ([], 1)


def test_timelines_are_read_from_the_folder_and_tabled(tmp_path: Path) -> None:
    orchestrator, worker = one_hop(100.0)
    (tmp_path / "orchestrator-1.json").write_text(json.dumps(orchestrator))
    (tmp_path / "worker-2.json").write_text(json.dumps(worker))

    text = table(breakdown(*load(tmp_path)))

    assert "| EndTxn | round trip | 0.90 | 0.90 | 0.90 |" in text
    assert "| hop | the whole hop | 8.30 |" in text


def test_a_folder_without_a_service_timeline_says_which(tmp_path: Path) -> None:
    (tmp_path / "orchestrator-1.json").write_text("[]")

    with pytest.raises(FileNotFoundError, match="no worker timeline"):
        load(tmp_path)
