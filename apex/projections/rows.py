"""What the read models hold, as a pure fold of the log.

A run's read-model rows are a function of its events and nothing else:
:func:`project` folds one more event into a :class:`RunView` — the run's
:class:`~apex.domain.state.RunState` through :func:`~apex.domain.state.evolve`
(the very fold the orchestrator reasons with) plus what the approvals inbox
needs and ``RunState`` does not keep (who decided, when, the deadline) — and
the ``*_row`` functions turn a view into rows. The live projector, the bulk
rebuild and ``apex audit verify`` all go through here, so "every row equals a
fold of the log" checks the database against the log, not two codes against
each other.

``CommandRejected`` with ``seq == 0`` belongs to no run's history (``evolve``
ignores it): it gets no row and no ``event_index`` entry — the index's key is
``(run_id, seq)`` and such refusals would collide on ``seq`` 0.

Pure: no I/O, no clock. A row's times (its ``*_at`` fields) are epoch
milliseconds, as the log has them, in the rows a store writes (:class:`Changes`,
:func:`index_row_at`): the live projector sends them as they are, and turning
them into ``datetime`` and back was 7 % of its CPU (py-spy). The rows as
PostgreSQL gives them back (:func:`run_row`, :func:`step_rows`,
:func:`approval_rows`, :func:`event_index_row`: what ``apex audit verify``
compares) hold UTC ``datetime`` built exactly from the milliseconds (no float
rounding), the values of ``timestamptz``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

from apex.domain import events as ev
from apex.domain.definitions import GateWhen
from apex.domain.state import RunDraft, RunState, RunStatus, evolve

__all__ = [
    "COUNT_COLUMNS",
    "Approval",
    "ApprovalRow",
    "ApprovalStatus",
    "Changes",
    "DefinitionCountRow",
    "EventIndexRow",
    "LogPosition",
    "RowTime",
    "RunRow",
    "RunView",
    "StepRow",
    "ViewFold",
    "approval_rows",
    "changes_between",
    "count_rows",
    "event_index_row",
    "fold_views",
    "from_ms",
    "index_row_at",
    "project",
    "read_back",
    "run_row",
    "step_rows",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_ms(ms: int | None) -> datetime | None:
    """Epoch milliseconds as an aware UTC datetime, exactly (``None`` stays ``None``)."""
    # Integer days/seconds/microseconds: exact, and faster than keyword arguments
    # (this runs for every event of a rebuild).
    return None if ms is None else _EPOCH + timedelta(0, ms // 1000, ms % 1000 * 1000)


# -- the view a run's rows come from --------------------------------------------------------


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    GRANTED = "granted"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    """The step was cancelled, or the run finished, while the approval was pending."""


@dataclass(frozen=True, slots=True)
class Approval:
    """The last approval asked for one step (a step has one gate, asked at most once)."""

    when: GateWhen
    requested_at_ms: int
    deadline_at_ms: int | None
    status: ApprovalStatus = ApprovalStatus.PENDING
    decided_by: str | None = None
    decided_at_ms: int | None = None
    note: str | None = None
    """The approver's comment, the rejection's reason, or why it was cancelled."""


@dataclass(frozen=True, slots=True)
class RunView:
    state: RunState
    approvals: Mapping[str, Approval] = field(default_factory=dict)
    updated_at_ms: int = 0
    """Time of the run's last event."""


def project(view: RunView | None, event: ev.Event) -> RunView | None:
    """The view after ``event``; raises :class:`~apex.domain.state.FoldError` like ``evolve``."""
    state = evolve(None if view is None else view.state, event)
    if state is None:
        return None
    if view is not None and state is view.state:
        return view  # a seq-0 refusal: not part of the run's history
    approvals = _approvals_after({} if view is None else view.approvals, state.status, event)
    return RunView(state, approvals, event.occurred_at_ms)


def fold_views(
    events: Iterable[ev.Event], views: dict[str, RunView] | None = None
) -> dict[str, RunView]:
    """Every run's view after ``events`` (in log order), from ``views`` (default: none)."""
    views = {} if views is None else views
    fold = ViewFold(views)
    for event in events:
        fold.apply(event)
    views.update(fold.freeze())
    return views


class ViewFold:
    """Many runs' views folded event by event, each run's state built once, at :meth:`freeze`.

    What :func:`project` gives event by event, without the views in between: a
    run's events go into one :class:`~apex.domain.state.RunDraft` (the
    decider's own batch fold), so a run touched by twenty events of a batch
    builds one ``RunState`` and one ``RunView`` instead of twenty (draft set-up
    and freezing were a fifth of a rebuild's fold). ``tests/unit/projections``
    checks it equals :func:`project` on every prefix of every scenario.

    ``before`` holds the views to start from (``None`` or absent: no run yet);
    they are never changed. An event that does not fold raises ``FoldError``
    and leaves its run as it was (``RunDraft.apply`` refuses before changing
    anything), so the caller can dead-letter it and go on.
    """

    __slots__ = ("_before", "_drafts")

    def __init__(self, before: Mapping[str, RunView | None] | None = None) -> None:
        self._before: Mapping[str, RunView | None] = {} if before is None else before
        self._drafts: dict[str, _ViewDraft] = {}

    def apply(self, event: ev.Event) -> bool:
        """Fold ``event`` into its run; ``False`` when it is part of no run's history."""
        draft = self._drafts.get(event.run_id)
        if draft is None:
            view = self._before.get(event.run_id)
            if view is None:
                state = evolve(None, event)
                if state is None:
                    return False
                self._drafts[event.run_id] = _ViewDraft(RunDraft(state), {}, event.occurred_at_ms)
                return True
            draft = _ViewDraft(RunDraft(view.state), view.approvals, view.updated_at_ms)
            if not draft.run.apply(event):
                return False
            self._drafts[event.run_id] = draft
        elif not draft.run.apply(event):
            return False
        if draft.approvals or type(event) in _APPROVAL_RULES:
            draft.approvals = _approvals_after(draft.approvals, draft.run.status, event)
        draft.updated_at_ms = event.occurred_at_ms
        return True

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._drafts

    def freeze(self) -> dict[str, RunView]:
        """The view of every run an event was folded into; the fold starts over empty."""
        drafts, self._drafts = self._drafts, {}
        return {
            run_id: RunView(d.run.freeze(), d.approvals, d.updated_at_ms)
            for run_id, d in drafts.items()
        }


class _ViewDraft:
    __slots__ = ("approvals", "run", "updated_at_ms")

    def __init__(self, run: RunDraft, approvals: Mapping[str, Approval], updated_at_ms: int):
        self.run = run
        self.approvals = approvals
        self.updated_at_ms = updated_at_ms


def _approvals_after(
    approvals: Mapping[str, Approval], status: RunStatus, event: ev.Event
) -> Mapping[str, Approval]:
    """The approvals after ``event``, the run now being in ``status``."""
    rule = _APPROVAL_RULES.get(type(event))
    if rule is not None:
        approvals = rule(approvals, event)
    if status.finished and any(a.status is ApprovalStatus.PENDING for a in approvals.values()):
        note = f"run {status.value}"
        approvals = {
            sid: _cancelled(a, event.occurred_at_ms, note)
            if a.status is ApprovalStatus.PENDING
            else a
            for sid, a in approvals.items()
        }
    return approvals


def _requested(approvals: Mapping[str, Approval], e: ev.ApprovalRequested) -> dict[str, Approval]:
    return {**approvals, e.step_id: Approval(e.when, e.occurred_at_ms, e.deadline_at_ms)}


def _granted(approvals: Mapping[str, Approval], e: ev.ApprovalGranted) -> Mapping[str, Approval]:
    return _decide(approvals, e, ApprovalStatus.GRANTED, e.approver, e.comment)


def _rejected(approvals: Mapping[str, Approval], e: ev.ApprovalRejected) -> Mapping[str, Approval]:
    return _decide(approvals, e, ApprovalStatus.REJECTED, e.approver, e.reason)


def _step_cancelled(
    approvals: Mapping[str, Approval], e: ev.StepCancelled
) -> Mapping[str, Approval]:
    old = approvals.get(e.step_id)
    if old is None or old.status is not ApprovalStatus.PENDING:
        return approvals
    return {**approvals, e.step_id: _cancelled(old, e.occurred_at_ms, e.reason)}


def _decide(
    approvals: Mapping[str, Approval],
    e: ev.ApprovalGranted | ev.ApprovalRejected,
    status: ApprovalStatus,
    who: str,
    note: str,
) -> Mapping[str, Approval]:
    old = approvals.get(e.step_id)
    if old is None:  # evolve accepted it, so the log is what it is: keep what it says
        return approvals
    decided = replace(
        old, status=status, decided_by=who, decided_at_ms=e.occurred_at_ms, note=note or None
    )
    return {**approvals, e.step_id: decided}


def _cancelled(approval: Approval, at_ms: int, note: str) -> Approval:
    return replace(
        approval, status=ApprovalStatus.CANCELLED, decided_at_ms=at_ms, note=note or None
    )


_APPROVAL_RULES: dict[type[ev.Event], Any] = {
    ev.ApprovalRequested: _requested,
    ev.ApprovalGranted: _granted,
    ev.ApprovalRejected: _rejected,
    ev.StepCancelled: _step_cancelled,
}


# -- rows, in the column order of the tables (apex/projections/schema.py) --------------------

RowTime = int | datetime | None
"""A row's time: epoch milliseconds in the rows a store writes (:class:`Changes`,
:func:`index_row_at`), a UTC ``datetime`` in the rows as PostgreSQL gives them
back (:func:`run_row` and the like); see the module docstring."""


class RunRow(NamedTuple):
    run_id: str
    definition_name: str
    definition_version: int
    status: str
    input: Any
    outputs: Any
    error: str | None
    correlation_id: str
    started_at: RowTime
    finished_at: RowTime
    updated_at: RowTime
    last_seq: int


class StepRow(NamedTuple):
    run_id: str
    step_id: str
    status: str
    attempt: int
    worker_id: str | None
    started_at: RowTime
    finished_at: RowTime
    output: Any
    error: str | None


class ApprovalRow(NamedTuple):
    run_id: str
    step_id: str
    when: str
    status: str
    requested_at: RowTime
    deadline_at: RowTime
    decided_by: str | None
    decided_at: RowTime
    note: str | None


class EventIndexRow(NamedTuple):
    run_id: str
    seq: int
    type: str
    occurred_at: RowTime
    topic: str
    partition: int
    offset: int


COUNT_COLUMNS: tuple[str, ...] = ("started", "running", "completed", "failed", "cancelled")


class DefinitionCountRow(NamedTuple):
    name: str
    version: int
    started: int
    running: int
    completed: int
    failed: int
    cancelled: int


class LogPosition(NamedTuple):
    topic: str
    partition: int
    offset: int


def run_row(view: RunView) -> RunRow:
    """The run's row as PostgreSQL gives it back (times as ``datetime``)."""
    return read_back(_run_row(view))


def step_rows(view: RunView, only: Iterable[str] | None = None) -> list[StepRow]:
    """The steps' rows (``only`` these, in this order) as PostgreSQL gives them back."""
    return [read_back(row) for row in _step_rows(view, only)]


def approval_rows(view: RunView, only: Iterable[str] | None = None) -> list[ApprovalRow]:
    """The approvals' rows (``only`` these, in this order) as PostgreSQL gives them back."""
    return [read_back(row) for row in _approval_rows(view, only)]


def event_index_row(event: ev.Event, position: LogPosition) -> EventIndexRow:
    """The event's index row as PostgreSQL gives it back."""
    return read_back(index_row_at(event, *position))


def index_row_at(event: ev.Event, topic: str, partition: int, offset: int) -> EventIndexRow:
    """The event's index row as a store writes it: the live projector's per-event path."""
    # tuple.__new__ skips the NamedTuple's Python-level __new__: once per event.
    row: EventIndexRow = _new_tuple(
        EventIndexRow,
        (
            event.run_id,
            event.seq,
            type(event).__name__,
            event.occurred_at_ms,
            topic,
            partition,
            offset,
        ),
    )
    return row


def _run_row(view: RunView) -> RunRow:
    s = view.state
    # tuple.__new__ (as in index_row_at): the live projector writes a run's row per batch.
    row: RunRow = _new_tuple(
        RunRow,
        (
            s.run_id,
            s.definition.name,
            s.definition.version,
            s.status.value,
            s.input,
            s.outputs,
            s.error,
            s.correlation_id,
            s.started_at_ms,
            s.finished_at_ms,
            view.updated_at_ms,
            s.seq,
        ),
    )
    return row


def _step_rows(view: RunView, only: Iterable[str] | None = None) -> list[StepRow]:
    s = view.state
    rows = []
    for sid in s.order if only is None else only:
        st = s.steps[sid]
        values = (
            s.run_id,
            sid,
            st.status.value,
            st.attempt,
            st.worker_id or None,
            st.started_at_ms,
            st.finished_at_ms,
            st.output,
            st.error,
        )
        rows.append(_new_tuple(StepRow, values))
    return rows


def _approval_rows(view: RunView, only: Iterable[str] | None = None) -> list[ApprovalRow]:
    rows = []
    for sid in sorted(view.approvals) if only is None else only:
        a = view.approvals[sid]
        rows.append(
            ApprovalRow(
                view.state.run_id,
                sid,
                a.when.value,
                a.status.value,
                a.requested_at_ms,
                a.deadline_at_ms,
                a.decided_by,
                a.decided_at_ms,
                a.note,
            )
        )
    return rows


_Row = TypeVar("_Row", RunRow, StepRow, ApprovalRow, EventIndexRow)


def read_back(row: _Row) -> _Row:
    """A row as a store writes it (times in epoch ms), as PostgreSQL gives it back
    (times as ``datetime``)."""
    values: list[Any] = list(row)
    for i in _TIMES[type(row)]:
        values[i] = from_ms(values[i])
    read: _Row = _new_tuple(type(row), values)
    return read


_TIMES: dict[type, tuple[int, ...]] = {
    kind: tuple(i for i, name in enumerate(kind._fields) if name.endswith("_at"))
    for kind in (RunRow, StepRow, ApprovalRow, EventIndexRow)
}
"""Positions of each row type's times (its ``*_at`` fields; the store checks they are
the tables' ``timestamptz`` columns)."""

_new_tuple: Any = tuple.__new__


def count_rows(views: Iterable[RunView]) -> list[DefinitionCountRow]:
    """``definition_counts`` as a fold of every run gives it, sorted by (name, version)."""
    counts: dict[tuple[str, int], dict[str, int]] = {}
    for view in views:
        _add_counts(counts, None, view)
    return _count_rows(counts)


# -- what a batch of events changes ------------------------------------------------------------


@dataclass
class Changes:
    """The rows a batch of events changes: upserted whole, plus new index rows and counts.

    ``runs``/``steps``/``approvals`` hold the *current* row of everything the
    batch touched (an upsert); ``events`` the new ``event_index`` rows (plain
    inserts: a repeat must fail on the primary key); ``counts`` per-definition
    deltas added to ``definition_counts``. Times are epoch milliseconds (rows as
    written, see the module docstring).
    """

    runs: list[RunRow] = field(default_factory=list)
    steps: list[StepRow] = field(default_factory=list)
    approvals: list[ApprovalRow] = field(default_factory=list)
    events: list[EventIndexRow] = field(default_factory=list)
    counts: list[DefinitionCountRow] = field(default_factory=list)

    def extend(self, other: Changes) -> None:
        """Add another batch's changes (of other runs: a run lives in one partition)."""
        self.runs.extend(other.runs)
        self.steps.extend(other.steps)
        self.approvals.extend(other.approvals)
        self.events.extend(other.events)
        self.counts = _merge_counts(self.counts, other.counts)

    def __len__(self) -> int:
        return (
            len(self.runs)
            + len(self.steps)
            + len(self.approvals)
            + len(self.events)
            + len(self.counts)
        )


def changes_between(
    before: Mapping[str, RunView | None],
    after: Mapping[str, RunView],
    events: Iterable[EventIndexRow] = (),
) -> Changes:
    """The rows that differ between two views of the same runs.

    A step or approval row is written only when its value object changed
    (``evolve`` replaces exactly the steps an event touches); a run row for
    every run in ``after``.
    """
    changes = Changes(events=list(events))
    counts: dict[tuple[str, int], dict[str, int]] = {}
    runs, steps, approvals = changes.runs, changes.steps, changes.approvals
    for run_id, view in after.items():
        old = before.get(run_id)
        if old is view:
            continue
        runs.append(_run_row(view))
        state = view.state
        if old is None:
            steps.extend(_step_rows(view))
        else:
            old_steps, new_steps = old.state.steps, state.steps
            if old_steps is not new_steps:
                changed_steps = [
                    sid for sid in state.order if old_steps.get(sid) is not new_steps[sid]
                ]
                steps.extend(_step_rows(view, changed_steps))
        if view.approvals:  # approvals are never removed: none now, none changed
            old_approvals: Mapping[str, Approval] = {} if old is None else old.approvals
            changed_approvals = [
                sid
                for sid in sorted(view.approvals)
                if old_approvals.get(sid) is not view.approvals[sid]
            ]
            approvals.extend(_approval_rows(view, changed_approvals))
        if old is None or old.state.status is not state.status:
            _add_counts(counts, old, view)
    changes.counts = [row for row in _count_rows(counts) if any(row[2:])]
    return changes


def _merge_counts(
    a: list[DefinitionCountRow], b: list[DefinitionCountRow]
) -> list[DefinitionCountRow]:
    """Count deltas of two batches: one row per definition (an upsert must not see it twice)."""
    merged: dict[tuple[str, int], list[int]] = {}
    for row in (*a, *b):
        values = merged.setdefault((row.name, row.version), [0] * len(COUNT_COLUMNS))
        for i, value in enumerate(row[2:]):
            values[i] += value
    return [DefinitionCountRow(n, v, *values) for (n, v), values in sorted(merged.items())]


def _add_counts(
    counts: dict[tuple[str, int], dict[str, int]], before: RunView | None, after: RunView
) -> None:
    old = None if before is None else before.state.status
    new = after.state.status
    if old is new:
        return
    definition = after.state.definition
    row = counts.setdefault((definition.name, definition.version), dict.fromkeys(COUNT_COLUMNS, 0))
    if old is None:
        row["started"] += 1
    else:
        row[_COUNT_OF[old]] -= 1
    row[_COUNT_OF[new]] += 1


_COUNT_OF = {
    RunStatus.RUNNING: "running",
    RunStatus.COMPLETED: "completed",
    RunStatus.FAILED: "failed",
    RunStatus.CANCELLED: "cancelled",
}


def _count_rows(counts: dict[tuple[str, int], dict[str, int]]) -> list[DefinitionCountRow]:
    return [
        DefinitionCountRow(name, version, *(c[col] for col in COUNT_COLUMNS))
        for (name, version), c in sorted(counts.items())
    ]
