"""The read-model rows as a pure fold: they follow evolve, and batches add up to the whole."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apex.domain import commands as cmd
from apex.domain import events as ev
from apex.domain.decider import decide
from apex.domain.state import FoldError, fold
from apex.projections import rows as r
from benchmarks.synthetic_log import SCENARIOS, definition, play

ALL = sorted(set(SCENARIOS))

_GHOST_REFUSAL = ev.CommandRejected(
    run_id="ghost",
    seq=0,
    causation_id="c",
    correlation_id="",
    occurred_at_ms=1,
    command_type="ApproveStep",
    reason="unknown",
)
"""A refusal of a command for a run that never started: part of no run's history."""

_RUNS = st.lists(st.sampled_from(ALL), min_size=1, max_size=5)
"""Scenarios of the runs interleaved in one log."""
_CUTS = st.lists(st.integers(min_value=1, max_value=150), max_size=8)
"""Where that log is cut into batches."""


def test_from_ms_is_exact() -> None:
    assert r.from_ms(1_700_000_000_123) == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert r.from_ms(None) is None


def test_rows_are_written_in_epoch_ms_and_read_back_as_datetime() -> None:
    view = r.fold_views(play("approved", "run-1"))["run-1"]
    changes = r.changes_between({}, {"run-1": view})
    (written,) = changes.runs
    assert written.started_at == view.state.started_at_ms
    assert written.updated_at == view.updated_at_ms
    assert r.read_back(written) == r.run_row(view)
    assert r.run_row(view).started_at == r.from_ms(view.state.started_at_ms)
    assert [r.read_back(row) for row in changes.steps] == r.step_rows(view)
    assert [r.read_back(row) for row in changes.approvals] == r.approval_rows(view)
    assert changes.approvals[0].deadline_at == view.approvals["act"].deadline_at_ms


def test_the_view_holds_exactly_the_state_evolve_gives() -> None:
    for scenario in ALL:
        events = play(scenario, "run-1")
        view = r.fold_views(events)["run-1"]
        assert view.state == fold(events)
        assert view.updated_at_ms == events[-1].occurred_at_ms


def test_rows_say_what_the_state_says() -> None:
    events = play("retry", "run-1")
    view = r.fold_views(events)["run-1"]
    run = r.run_row(view)
    assert (run.status, run.definition_name, run.last_seq) == (
        "completed",
        "synthetic-retry",
        len(events),
    )
    steps = {row.step_id: row for row in r.step_rows(view)}
    assert steps["classify"].attempt == 2 and steps["classify"].status == "succeeded"
    assert steps["classify"].output == {"step": "classify", "score": 0.87, "tags": ["a"]}


def test_approvals_record_who_decided_and_when() -> None:
    granted = r.fold_views(play("approved", "a"))["a"].approvals["act"]
    rejected = r.fold_views(play("rejected", "b"))["b"].approvals["act"]
    assert (granted.status, granted.decided_by, granted.note) == ("granted", "ann", "ok")
    assert (rejected.status, rejected.decided_by, rejected.note) == ("rejected", "bob", "too risky")
    assert granted.deadline_at_ms == granted.requested_at_ms + 3_600_000


def test_an_approval_pending_when_the_run_is_cancelled_is_cancelled() -> None:
    history = play("approved", "c")
    asked = next(i for i, e in enumerate(history) if isinstance(e, ev.ApprovalRequested))
    events = history[: asked + 1]
    state = fold(events)
    cancel = cmd.CancelRun(
        command_id="x", run_id="c", issued_at_ms=2_000_000_000_000, reason="customer withdrew"
    )
    events += decide(state, cancel)
    approval = r.fold_views(events)["c"].approvals["act"]
    assert approval.status is r.ApprovalStatus.CANCELLED
    assert approval.decided_at_ms == 2_000_000_000_000


def test_a_refusal_without_a_run_changes_no_view() -> None:
    refusal = _GHOST_REFUSAL
    assert r.project(None, refusal) is None
    view = r.fold_views(play("ok", "run-1"))["run-1"]
    again = replace(_GHOST_REFUSAL, run_id="run-1", command_type="StartRun", reason="x")
    assert r.project(view, again) is view


def test_changes_of_a_new_run_hold_every_row() -> None:
    views = r.fold_views(play("approved", "run-1"))
    changes = r.changes_between({}, views)
    assert len(changes.runs) == 1
    assert len(changes.steps) == len(definition("approved").steps)
    assert [a.status for a in changes.approvals] == ["granted"]
    assert changes.counts == [r.DefinitionCountRow("synthetic-approved", 1, 1, 0, 1, 0, 0)]


def _interleaved(scenarios: list[str]) -> list[ev.Event]:
    histories = [play(s, f"run-{i}") for i, s in enumerate(scenarios)]
    log: list[ev.Event] = []
    while any(histories):
        for history in histories:
            if history:
                log.append(history.pop(0))
    return log


def _cancelled_while_pending(run_id: str) -> list[ev.Event]:
    history = play("approved", run_id)
    asked = next(i for i, e in enumerate(history) if isinstance(e, ev.ApprovalRequested))
    events = history[: asked + 1]
    cancel = cmd.CancelRun(
        command_id="x", run_id=run_id, issued_at_ms=2_000_000_000_000, reason="withdrawn"
    )
    return events + list(decide(fold(events), cancel))


def _apply(tables: dict[str, dict[Any, Any]], changes: r.Changes) -> None:
    """What a store does: upsert rows by primary key, add count deltas; and what
    PostgreSQL gives back (times as datetime)."""
    for row in map(r.read_back, changes.runs):
        tables["runs"][row.run_id] = row
    for row in map(r.read_back, changes.steps):
        tables["steps"][(row.run_id, row.step_id)] = row
    for row in map(r.read_back, changes.approvals):
        tables["approvals"][(row.run_id, row.step_id)] = row
    for row in changes.counts:
        old = tables["counts"].get(row[:2], (0,) * 7)
        tables["counts"][row[:2]] = (
            *row[:2],
            *(a + b for a, b in zip(old[2:], row[2:], strict=True)),
        )


@settings(max_examples=60, deadline=None)
@given(scenarios=_RUNS, cuts=_CUTS)
def test_batches_add_up_to_the_rows_of_the_whole_fold(
    scenarios: list[str], cuts: list[int]
) -> None:
    # Runs interleaved in one log, cut into batches anywhere: applying each
    # batch's changes gives the rows of the whole fold, counts included.
    log = _interleaved(scenarios)
    bounds = sorted({c for c in cuts if c < len(log)} | {0, len(log)})
    tables: dict[str, dict[Any, Any]] = {"runs": {}, "steps": {}, "approvals": {}, "counts": {}}
    views: dict[str, r.RunView] = {}
    for lo, hi in itertools.pairwise(bounds):
        before = dict(views)
        after: dict[str, r.RunView] = {}
        for event in log[lo:hi]:
            view = r.project(after.get(event.run_id, before.get(event.run_id)), event)
            assert view is not None
            after[event.run_id] = view
        _apply(tables, r.changes_between(before, after))
        views.update(after)

    whole = r.fold_views(log)
    assert tables["runs"] == {k: r.run_row(v) for k, v in whole.items()}
    assert tables["steps"] == {
        (row.run_id, row.step_id): row for v in whole.values() for row in r.step_rows(v)
    }
    assert tables["approvals"] == {
        (row.run_id, row.step_id): row for v in whole.values() for row in r.approval_rows(v)
    }
    assert sorted(tables["counts"].values()) == [tuple(c) for c in r.count_rows(whole.values())]


def test_a_view_refuses_a_gap_like_evolve() -> None:
    events = play("ok", "run-1")
    view = r.fold_views(events[:3])["run-1"]
    with pytest.raises(FoldError, match="does not follow"):
        r.project(view, events[4])


@settings(max_examples=60, deadline=None)
@given(scenarios=_RUNS, cuts=_CUTS)
def test_a_view_fold_gives_what_project_gives_event_by_event(
    scenarios: list[str], cuts: list[int]
) -> None:
    # The projector and the rebuild fold a batch with ViewFold (one draft per
    # run), audit verify with project (one view per event): they must agree on
    # every batch boundary, and a fold must never change the views it starts from.
    log = _interleaved(scenarios) + _cancelled_while_pending("run-c")
    bounds = sorted({c for c in cuts if c < len(log)} | {0, len(log)})
    by_event: dict[str, r.RunView] = {}
    by_fold: dict[str, r.RunView] = {}
    for lo, hi in itertools.pairwise(bounds):
        before = dict(by_fold)
        kept = {run_id: (view, view.state.steps.copy()) for run_id, view in before.items()}
        fold_ = r.ViewFold(before)
        for event in log[lo:hi]:
            assert fold_.apply(event)
            view = r.project(by_event.get(event.run_id), event)
            assert view is not None
            by_event[event.run_id] = view
        after = fold_.freeze()
        assert after.keys() == {e.run_id for e in log[lo:hi]}
        by_fold.update(after)
        assert by_fold == by_event
        for run_id, (view, steps) in kept.items():
            assert before[run_id] is view and view.state.steps == steps


def test_an_event_that_does_not_fold_leaves_its_run_as_it_was() -> None:
    # The projector dead-letters such an event and applies the rest of its batch.
    events = play("retry", "run-1")
    start = r.fold_views(events[:3])
    fold_ = r.ViewFold(start)
    assert fold_.apply(events[3])
    with pytest.raises(FoldError, match="does not follow"):
        fold_.apply(events[5])
    with pytest.raises(FoldError, match="before RunStarted"):
        fold_.apply(play("ok", "run-2")[1])
    for event in events[4:]:
        assert fold_.apply(event)
    assert fold_.freeze() == r.fold_views(events)
    assert "run-2" not in r.ViewFold(start)
    assert r.ViewFold().apply(events[0]) and not r.ViewFold().apply(_GHOST_REFUSAL)


def test_an_event_naming_a_step_the_run_lacks_is_refused_and_changes_nothing() -> None:
    # A SignalReceived's rule records its command id before it touches the step:
    # the step must be checked first, or the projector's fold crashed (KeyError).
    events = play("ok", "run-1")
    start = r.fold_views(events[:2])
    fold_ = r.ViewFold(start)
    stray = ev.SignalReceived(
        run_id="run-1",
        seq=3,
        causation_id="signal-1",
        correlation_id="",
        occurred_at_ms=5,
        name="go",
        payload=None,
        correlation_key=None,
        step_id="no-such-step",
    )
    with pytest.raises(FoldError, match="no-such-step"):
        fold_.apply(stray)
    for event in events[2:]:
        assert fold_.apply(event)
    assert fold_.freeze() == r.fold_views(events)
