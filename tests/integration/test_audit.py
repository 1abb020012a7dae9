"""Audits on the real stack: history from Kafka by the index, state at a point, Avro
archives any tool reads, and tamper evidence (a changed event, a hand-edited row)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest
from avro.datafile import DataFileReader
from avro.io import DatumReader
from sqlalchemy import text
from typer.testing import CliRunner

from apex import codec
from apex.audit import (
    RunNotIndexed,
    export_events,
    run_history,
    state_at,
    state_to_dict,
    verify,
)
from apex.audit.history import index_positions
from apex.cli import app
from apex.domain import events as ev
from apex.domain.state import fold
from apex.kafka.clients import make_producer
from apex.projections.rebuild import rebuild
from apex.projections.rows import from_ms
from tests.conftest import TopicFactory
from tests.integration.projection_workload import Workload, workload
from tests.integration.runtime import of_type, read_events

__all__ = ["workload"]  # the session fixture, shared with test_projections


async def a_run_of_each_kind(w: Workload) -> dict[str, str]:
    """status (and 'retried', 'approved', 'rejected') -> one run id."""
    log = await read_events(w.settings)
    kinds: dict[str, str] = {}
    for run_id in w.run_ids:
        history = log[run_id]
        kinds.setdefault(type(history[-1]).__name__, run_id)
        if of_type(history, ev.StepRetryScheduled):
            kinds.setdefault("retried", run_id)
        if of_type(history, ev.ApprovalGranted):
            kinds.setdefault("approved", run_id)
        if of_type(history, ev.ApprovalRejected):
            kinds.setdefault("rejected", run_id)
    return kinds


# -- history ----------------------------------------------------------------------------------


async def test_history_reads_only_the_runs_offsets_and_equals_the_log(workload: Workload) -> None:
    log = await read_events(workload.settings)
    for run_id in (await a_run_of_each_kind(workload)).values():
        positions = await index_positions(workload.engine, workload.schema, run_id)
        first, last = positions[0][3], positions[-1][3]

        exact = await run_history(workload.settings, workload.engine, run_id, gap=0)
        usual = await run_history(workload.settings, workload.engine, run_id)

        assert [e.event for e in exact.events] == log[run_id]
        assert [e.event for e in usual.events] == log[run_id]
        # gap=0 seeks over every other run's record: it reads the run's events, no more.
        assert exact.records_read == len(log[run_id])
        # Reading through small gaps never goes before the first or after the last.
        assert len(log[run_id]) <= usual.records_read <= last - first + 1
        assert [(e.partition, e.offset) for e in usual.events] == [(p[2], p[3]) for p in positions]


async def test_history_of_an_unindexed_run_says_so(workload: Workload) -> None:
    with pytest.raises(RunNotIndexed, match="projector"):
        await run_history(workload.settings, workload.engine, "no-such-run")


# -- state at a point -------------------------------------------------------------------------


async def test_state_at_seq_and_at_time_equal_the_fold_of_the_prefix(workload: Workload) -> None:
    kinds = await a_run_of_each_kind(workload)
    for run_id in (kinds["retried"], kinds["approved"]):
        events = [
            e.event for e in (await run_history(workload.settings, workload.engine, run_id)).events
        ]
        for n in range(1, len(events) + 1):
            assert state_at(events, at_seq=n) == fold(events[:n])
        assert state_at(events, at_seq=0) is None
        middle = events[len(events) // 2]
        moment = from_ms(middle.occurred_at_ms)
        assert moment is not None
        expected = [e for e in events if e.occurred_at_ms <= middle.occurred_at_ms]
        assert state_at(events, at_time=moment) == fold(expected)
        assert state_at(events, at_time=moment - timedelta(days=1)) is None


# -- export -----------------------------------------------------------------------------------


async def test_export_round_trips_through_any_avro_reader(
    workload: Workload, tmp_path: Path
) -> None:
    log = await read_events(workload.settings)
    in_log = sorted(
        (e for history in log.values() for e in history if e.seq > 0),
        key=lambda e: (e.run_id, e.seq),
    )
    start = from_ms(min(e.occurred_at_ms for e in in_log))
    end = from_ms(max(e.occurred_at_ms for e in in_log) + 1)
    assert start is not None and end is not None
    path = tmp_path / "events.avro"

    report = await export_events(workload.settings, workload.engine, start, end, path)

    with path.open("rb") as f:
        exported = list(fastavro.reader(f))
    assert report.events == len(exported) == len(in_log)
    back = sorted(
        (codec.decode_event(rec["value"]) for rec in exported), key=lambda e: (e.run_id, e.seq)
    )
    assert back == in_log
    for rec in exported:
        event = codec.decode_event(rec["value"])
        assert (rec["run_id"], rec["seq"], rec["type"]) == (
            event.run_id,
            event.seq,
            f"apex.{type(event).__name__}",
        )
        assert rec["event"]["run_id"] == event.run_id and rec["event"]["seq"] == event.seq
        assert len(rec["chain"]) == 32
    with path.open("rb") as f:  # the Apache avro package: a tool that knows nothing of Apex
        reader = DataFileReader(f, DatumReader())
        by_avro = list(reader)
        embedded = json.loads(reader.get_meta("avro.schema"))
    assert [(r["run_id"], r["seq"], r["event"]) for r in by_avro] == [
        (r["run_id"], r["seq"], r["event"]) for r in exported
    ]
    assert embedded["name"] == "apex.audit.ArchivedEvent"


async def test_export_keeps_only_the_time_range(workload: Workload, tmp_path: Path) -> None:
    log = await read_events(workload.settings)
    times = sorted({e.occurred_at_ms for h in log.values() for e in h if e.seq > 0})
    lo, hi = times[len(times) // 4], times[3 * len(times) // 4]
    start, end = from_ms(lo), from_ms(hi)
    assert start is not None and end is not None

    report = await export_events(
        workload.settings, workload.engine, start, end, tmp_path / "part.avro"
    )

    with (tmp_path / "part.avro").open("rb") as f:
        got = sorted((r["run_id"], r["seq"]) for r in fastavro.reader(f))
    want = sorted(
        (e.run_id, e.seq)
        for h in log.values()
        for e in h
        if e.seq > 0 and lo <= e.occurred_at_ms < hi
    )
    assert got == want and report.events == len(want) > 0


# -- verify -----------------------------------------------------------------------------------


async def test_verify_passes_on_the_real_log(workload: Workload) -> None:
    everything = await verify(workload.settings, workload.engine)
    one = await verify(workload.settings, workload.engine, run_id=workload.run_ids[0])

    assert everything.differences == [] and one.differences == []
    assert everything.runs == len(workload.run_ids)
    assert everything.rows > everything.runs and one.runs == 1


async def test_verify_catches_an_event_altered_in_a_copy_of_the_log(
    workload: Workload, topic_factory: TopicFactory
) -> None:
    run_id = (await a_run_of_each_kind(workload))["RunCompleted"]
    history = (await run_history(workload.settings, workload.engine, run_id)).events
    copy = await topic_factory("events-copy", partitions=1)
    victim = next(e for e in history if isinstance(e.event, ev.StepSucceeded))
    producer = make_producer(workload.settings)
    await producer.start()
    try:
        for logged in history:
            value = logged.value
            if logged is victim:  # same event, another output: re-encoded, chain kept
                forged = dataclasses.replace(victim.event, output={"label": "forged"})
                value = codec.encode_event(forged)
            assert logged.chain is not None
            await producer.send_and_wait(
                copy, value, key=run_id.encode(), headers=[("apex.chain", logged.chain)]
            )
    finally:
        await producer.stop()

    report = await verify(workload.settings, workload.engine, run_id=run_id, topic=copy)

    chain = [d for d in report.differences if d.kind == "chain"]
    assert len(chain) == 1, report.differences
    assert chain[0].run_id == run_id and f"seq {victim.event.seq} " in chain[0].where
    assert any(d.kind == "row" and "forged" in d.detail for d in report.differences)
    untouched = await verify(workload.settings, workload.engine, run_id=run_id)
    assert untouched.ok


async def test_verify_catches_hand_edited_read_model_rows(workload: Workload) -> None:
    schema = workload.new_schema()
    settings = workload.with_schema(schema)
    await rebuild(settings, workload.engine)
    run_id = workload.run_ids[0]
    async with workload.engine.begin() as connection:
        await connection.execute(
            text(
                f'UPDATE "{schema}".steps SET output = \'{{"forged": true}}\' '
                "WHERE run_id = :run AND step_id = 'fetch'"
            ),
            {"run": run_id},
        )
        await connection.execute(
            text(f'DELETE FROM "{schema}".event_index WHERE run_id = :run AND seq = 2'),
            {"run": run_id},
        )
        await connection.execute(
            text(f'UPDATE "{schema}".definition_counts SET completed = completed + 1')
        )

    report = await verify(settings, workload.engine)

    found = {(d.kind, d.where.split(" ")[0]) for d in report.differences}
    assert found == {("row", "steps"), ("missing", "event_index"), ("row", "definition_counts")}
    step = next(d for d in report.differences if d.where.startswith("steps"))
    assert step.run_id == run_id and "output: read model {'forged': True}" in step.detail


# -- the CLI ------------------------------------------------------------------------------------


async def _cli(w: Workload, *args: str, schema: str | None = None) -> Any:
    """``apex ARGS`` with the workload's settings; in a thread, as it runs its own event loop."""
    env = w.with_schema(schema or w.schema).to_env()
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


def _words(text: str) -> str:
    return " ".join(text.split())  # Rich wraps long lines at spaces


async def test_cli_history_and_state_print_json(workload: Workload) -> None:
    run_id = workload.run_ids[1]
    events = [
        e.event for e in (await run_history(workload.settings, workload.engine, run_id)).events
    ]

    history = await _cli(workload, "audit", "history", run_id, "--json")
    state = await _cli(workload, "audit", "state", run_id, "--at-seq", "5", "--json")

    assert history.exit_code == 0, history.output
    lines = [json.loads(line) for line in history.output.splitlines()]
    assert [(line["seq"], line["type"]) for line in lines] == [
        (e.seq, type(e).__name__) for e in events
    ]
    assert len(lines[0]["chain"]) == 64
    assert state.exit_code == 0, state.output
    folded = fold(events[:5])
    assert folded is not None
    assert json.loads(state.output) == json.loads(json.dumps(state_to_dict(folded)))


async def test_cli_verify_exits_non_zero_on_a_difference(workload: Workload) -> None:
    ok = await _cli(workload, "audit", "verify")
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output

    forged = workload.new_schema()
    rebuilt = await _cli(workload, "projections", "rebuild", "--json", schema=forged)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert json.loads(rebuilt.output)["runs"] == len(workload.run_ids)
    async with workload.engine.begin() as connection:
        await connection.execute(
            text(f"UPDATE \"{forged}\".runs SET status = 'completed' WHERE status = 'failed'")
        )

    bad = await _cli(workload, "audit", "verify", schema=forged)

    assert bad.exit_code == 1
    assert "status: read model 'completed' != log 'failed'" in _words(bad.output)


async def test_cli_export_and_status(workload: Workload, tmp_path: Path) -> None:
    path = tmp_path / "all.avro"
    exported = await _cli(
        workload,
        "audit",
        "export",
        "--from",
        "2000-01-01T00:00:00Z",
        "--to",
        "2100-01-01",
        "-o",
        str(path),
    )
    status = await _cli(workload, "projections", "status", "--json")

    assert exported.exit_code == 0, exported.output
    with path.open("rb") as f:
        assert len(list(fastavro.reader(f))) == sum(
            1 for h in (await read_events(workload.settings)).values() for e in h if e.seq > 0
        )
    assert status.exit_code == 0, status.output
    assert all(json.loads(line)["lag"] == 0 for line in status.output.splitlines())
