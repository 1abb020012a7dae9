"""A run's state, and ``evolve``: the state after one more event.

``evolve`` is the only way a state changes; folding a run's events through it
reproduces the state the decider reasoned about (invariant 3). It refuses an
event whose ``seq`` is not the next one, so a gap or a duplicate in a log can
never fold silently into a wrong state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from apex.domain import events as ev
from apex.domain.definitions import JSON, GateWhen, StepDefinition, WorkflowDefinition
from apex.domain.frozen import constructor
from apex.domain.graph import sinks, topological_order


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED_RUN


class StepStatus(StrEnum):
    PENDING = "pending"
    """Waiting for its dependencies."""
    SCHEDULED = "scheduled"
    AWAITING_SIGNAL = "awaiting_signal"
    AWAITING_APPROVAL = "awaiting_approval"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED_STEP

    @property
    def active(self) -> bool:
        """A worker may be executing it."""
        return self in _ACTIVE_STEP


# Module constants, not ``StepStatus.X`` in the properties: see below.
_FINISHED_RUN = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
_FINISHED_STEP = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.FAILED, StepStatus.CANCELLED}
)
_ACTIVE_STEP = frozenset({StepStatus.DISPATCHED, StepStatus.RUNNING})

# ``StepStatus.X`` costs ~300 ns: ``EnumType`` defines ``__getattr__``, which
# takes every attribute lookup on an enum class off CPython's fast path. The
# rules below, run for every event, read the members from module names.
_PENDING = StepStatus.PENDING
_SCHEDULED = StepStatus.SCHEDULED
_AWAITING_SIGNAL = StepStatus.AWAITING_SIGNAL
_AWAITING_APPROVAL = StepStatus.AWAITING_APPROVAL
_DISPATCHED = StepStatus.DISPATCHED
_RUNNING = StepStatus.RUNNING
_RETRY_WAIT = StepStatus.RETRY_WAIT
_SUCCEEDED = StepStatus.SUCCEEDED
_SKIPPED = StepStatus.SKIPPED
_FAILED = StepStatus.FAILED
_CANCELLED = StepStatus.CANCELLED


@dataclass(frozen=True, slots=True)
class StepState:
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    """The current attempt; 0 before the first dispatch."""
    input: JSON = None
    output: JSON = None
    error: str | None = None
    worker_id: str = ""
    last_activity_ms: int | None = None
    """Dispatch time or last heartbeat of the current attempt: timeouts count from it."""
    approval_granted: bool = False
    gate: GateWhen | None = None
    """The gate asked last, while ``AWAITING_APPROVAL``."""
    signal_payload: JSON = None
    started_at_ms: int | None = None
    finished_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class PendingTimer:
    timer_id: str
    fire_at_ms: int
    purpose: str
    step_id: str | None
    attempt: int | None


@dataclass(frozen=True, slots=True)
class BufferedSignal:
    name: str
    payload: JSON
    correlation_key: str | None


@dataclass(frozen=True, slots=True)
class RunState:
    run_id: str
    definition: WorkflowDefinition
    input: JSON
    idempotency_key: str
    jitter_seed: int
    correlation_id: str
    start_command_id: str
    started_at_ms: int
    seq: int
    status: RunStatus
    steps: Mapping[str, StepState]
    timers: Mapping[str, PendingTimer]
    order: tuple[str, ...]
    """Step ids in topological order (derived from the definition)."""
    step_defs: Mapping[str, StepDefinition]
    """The definition's steps by id (derived from it, once per run)."""
    signals: tuple[BufferedSignal, ...] = ()
    signal_command_ids: frozenset[str] = frozenset()
    """Causation ids of every ``SignalReceived``: a ``SendSignal`` delivered again is
    recognised by its command id (a signal carries no other identity)."""
    outputs: JSON = None
    error: str | None = None
    finished_at_ms: int | None = None

    def step(self, step_id: str) -> StepState:
        return self.steps[step_id]


class FoldError(ValueError):
    """An event cannot follow the state it is applied to (gap, duplicate, wrong run)."""


# The draft and the rules list the fields by position: fail at import, not with
# a silently shifted state, if the dataclasses change.
_RUN_FIELDS = (
    "run_id", "definition", "input", "idempotency_key", "jitter_seed", "correlation_id",
    "start_command_id", "started_at_ms", "seq", "status", "steps", "timers", "order", "step_defs",
    "signals", "signal_command_ids", "outputs", "error", "finished_at_ms",
)  # fmt: skip
_STEP_FIELD_ORDER = (
    "status", "attempt", "input", "output", "error", "worker_id", "last_activity_ms",
    "approval_granted", "gate", "signal_payload", "started_at_ms", "finished_at_ms",
)  # fmt: skip
_STEP_FIELDS = frozenset(_STEP_FIELD_ORDER)
if (
    tuple(f.name for f in fields(RunState)) != _RUN_FIELDS
    or tuple(f.name for f in fields(StepState)) != _STEP_FIELD_ORDER
):
    raise ImportError("RunState/StepState fields changed: update RunDraft and the rules")


def fold(events: Iterable[ev.Event], state: RunState | None = None) -> RunState | None:
    """The state after every event, from ``state`` (default: no run yet)."""
    draft = None if state is None else RunDraft(state)
    for event in events:
        if draft is None:
            state = evolve(state, event)
            draft = None if state is None else RunDraft(state)
        else:
            draft.apply(event)
    return state if draft is None else draft.freeze()


def evolve(state: RunState | None, event: ev.Event) -> RunState | None:
    """The state after ``event``. Pure; raises :class:`FoldError` on a seq gap."""
    if state is None:
        if isinstance(event, ev.RunStarted):
            if event.seq != 1:
                raise FoldError(f"run {event.run_id}: RunStarted has seq {event.seq}, not 1")
            return _started(event)
        if isinstance(event, ev.CommandRejected) and event.seq == 0:
            return None
        raise FoldError(
            f"run {event.run_id}: {type(event).__name__} (seq {event.seq}) before RunStarted"
        )
    draft = RunDraft(state)
    if not draft.apply(event):
        return state
    return draft.freeze()


class RunDraft:
    """A run's state while events are folded into it, one after the other.

    ``evolve``'s rules write into a draft; :meth:`freeze` makes the
    :class:`RunState`. Folding several events — a decision's, or a log's —
    into one draft builds one state at the end instead of one per event (a
    ``RunState`` has 19 fields, so building it was a good part of each event's
    cost). A draft reads like the state it will be (the same attribute names)
    and has its own copy of the step map, and replaces the timer map where it
    changes, so no ``RunState`` is ever changed; once frozen, the draft *is* the
    state (see :meth:`freeze`) and is done.
    """

    # The same slots as RunState, in the same order: the layout that lets
    # ``freeze`` turn the draft into the state (checked below the class).
    __slots__ = _RUN_FIELDS

    def __init__(self, s: RunState) -> None:
        self.run_id = s.run_id
        self.definition = s.definition
        self.input = s.input
        self.idempotency_key = s.idempotency_key
        self.jitter_seed = s.jitter_seed
        self.correlation_id = s.correlation_id
        self.start_command_id = s.start_command_id
        self.started_at_ms = s.started_at_ms
        self.seq = s.seq
        self.status = s.status
        self.steps = {**s.steps}
        # The rules replace the timers map instead of changing it (they are few, and
        # most commands change none): the draft starts with the state's own.
        self.timers: Mapping[str, PendingTimer] = s.timers
        self.order = s.order
        self.step_defs = s.step_defs
        self.signals = s.signals
        self.signal_command_ids = s.signal_command_ids
        self.outputs = s.outputs
        self.error = s.error
        self.finished_at_ms = s.finished_at_ms

    def apply(self, event: ev.Event) -> bool:
        """Fold ``event`` in; ``False`` when it changes nothing (a refusal with seq 0).

        Raises :class:`FoldError`, leaving the draft as it was, when it belongs
        to another run, does not follow (a gap, a duplicate) or names a step
        the run does not have.
        """
        if event.run_id != self.run_id:
            raise FoldError(f"event of run {event.run_id} applied to run {self.run_id}")
        seq = event.seq
        if seq != self.seq + 1:
            if seq == 0 and isinstance(event, ev.CommandRejected):
                return False
            raise FoldError(
                f"run {self.run_id}: event seq {seq} does not follow {self.seq} "
                f"({type(event).__name__})"
            )
        rule = _APPLY.get(type(event))
        if rule is None:
            raise FoldError(f"no evolve rule for {type(event).__name__}")
        step_id = getattr(event, "step_id", None)
        if step_id is not None and step_id not in self.steps:
            # Before any rule changes the draft: the run stays as it was.
            raise FoldError(
                f"run {self.run_id}: {type(event).__name__} names step {step_id!r}, "
                "which the run does not have"
            )
        rule(self, event)
        self.seq = seq
        return True

    def freeze(self) -> RunState:
        """The state the draft is now: the draft itself, made a ``RunState``; it is done.

        The draft holds every field of the state in the state's own layout, so it
        becomes the state by taking its class (as :mod:`apex.domain.frozen` builds
        frozen objects) instead of being copied into a new one, field by field, at
        the end of every command. From then on it is frozen like any state.
        """
        if not self.timers:
            self.timers = _NO_TIMERS  # most runs wait with no timer: they share one map
        # CPython refuses (TypeError) unless both classes have the same slots on the
        # same base (checked below the class).
        self.__class__ = RunState  # type: ignore[assignment]
        return self  # type: ignore[return-value]

    def drop_timers(self, step_id: str, purposes: frozenset[str]) -> None:
        """Forget the step's pending timers for ``purposes`` (they no longer matter)."""
        timers = self.timers
        # Called on every dispatch and every success, and nearly always finds
        # nothing: look first, and copy the (few) entries only to drop some.
        for timer in timers.values():
            if timer.step_id == step_id and timer.purpose in purposes:
                break
        else:
            return
        self.timers = {
            timer_id: timer
            for timer_id, timer in timers.items()
            if timer.step_id != step_id or timer.purpose not in purposes
        }


if RunDraft.__slots__ != RunState.__slots__ or RunDraft.__bases__ != RunState.__bases__:
    raise ImportError("RunDraft must have RunState's layout: RunDraft.freeze makes one the other")


# -- one rule per event type ---------------------------------------------------------
#
# Each rule writes what its event changes into the draft (``apply`` sets
# ``seq``). The rules that run for every step of every run build the step's
# state with the fast positional constructor (:mod:`apex.domain.frozen`): a
# frozen dataclass's own ``__init__`` sets each field through
# ``object.__setattr__``; the rare ones use ``_step_changed``.

_new_run = constructor(RunState)
_new_step = constructor(StepState)
_new_timer = constructor(PendingTimer)


def _step_changed(old: StepState, **changes: Any) -> StepState:
    """``replace(old, **changes)`` for the hot path (see above); a plain state is shared."""
    assert changes.keys() <= _STEP_FIELDS, f"StepState has no {changes.keys() - _STEP_FIELDS}"
    get = changes.get
    return _shared_if_plain(
        _new_step(
            get("status", old.status),
            get("attempt", old.attempt),
            get("input", old.input),
            get("output", old.output),
            get("error", old.error),
            get("worker_id", old.worker_id),
            get("last_activity_ms", old.last_activity_ms),
            get("approval_granted", old.approval_granted),
            get("gate", old.gate),
            get("signal_payload", old.signal_payload),
            get("started_at_ms", old.started_at_ms),
            get("finished_at_ms", old.finished_at_ms),
        )
    )


# -- what runs share -------------------------------------------------------------------
#
# An active run costs the orchestrator memory for as long as it waits (DESIGN.md:
# < 2 KB a run at 10,000 runs). What is the same in every run is one object that
# they all point at, never a copy per run: the definition and what is derived from
# it (``step_graph``), the empty maps and sets, and the step states that carry
# nothing of their run. Sharing is safe only because nothing is ever changed in
# place: states are frozen, the draft copies a state's step map before it writes
# (``RunDraft.__init__``), no timer map is changed once made (the rules replace it),
# and the shared empty map is read-only.

_NO_TIMERS: Mapping[str, PendingTimer] = MappingProxyType({})
"""The timers of every run that has none (a read-only view: it cannot be filled)."""
_NO_STEPS: Mapping[str, StepState] = MappingProxyType({})
_NO_STEP_DEFS: Mapping[str, StepDefinition] = MappingProxyType({})
"""A retired run's (see ``retire``)."""
_NO_SIGNAL_IDS: frozenset[str] = frozenset()
"""CPython makes a new object of every ``frozenset()`` (216 bytes); runs share this one."""

_NOT_STARTED = StepState()
"""Every step's state before it is scheduled; one object, as it is frozen."""
_PLAIN: dict[tuple[StepStatus, bool, GateWhen | None], StepState] = {
    (_PENDING, False, None): _NOT_STARTED
}
"""Step states that say nothing of their run — a status, the gate asked and whether it
was granted, every other field at its default — one object per combination."""
_SCHEDULED_FIRST = _PLAIN.setdefault(
    (_SCHEDULED, False, None), _new_step(_SCHEDULED, 0, None, None, None, "", None, False)
)
"""A step scheduled for the first time (from ``_NOT_STARTED``): most steps, in every run."""


def _shared_if_plain(step: StepState) -> StepState:
    """The shared object equal to ``step`` when it says nothing of its run, else ``step``."""
    if (
        step.attempt == 0
        and step.last_activity_ms is None
        and step.input is None
        and step.output is None
        and step.error is None
        and step.worker_id == ""
        and step.signal_payload is None
        and step.started_at_ms is None
        and step.finished_at_ms is None
    ):
        return _PLAIN.setdefault((step.status, step.approval_granted, step.gate), step)
    return step


def _started(e: ev.RunStarted) -> RunState:
    graph = step_graph(e.definition)
    return _new_run(
        e.run_id, e.definition, e.input, e.idempotency_key, e.jitter_seed, e.correlation_id,
        e.causation_id, e.occurred_at_ms, 1, RunStatus.RUNNING, dict(graph.not_started),
        _NO_TIMERS, graph.order, graph.step_defs, (), _NO_SIGNAL_IDS, None, None, None,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class StepGraph:
    """What runs derive from their definition's steps: worked out once per definition."""

    order: tuple[str, ...]
    """Step ids in topological order."""
    step_defs: Mapping[str, StepDefinition]
    not_started: Mapping[str, StepState]
    """Every step's state at ``RunStarted`` (copy before changing)."""
    dependencies: tuple[tuple[str, tuple[str, ...]], ...]
    """``(step id, its depends_on)`` in ``order``."""
    dependents: Mapping[str, tuple[int, ...]]
    """For each step, the positions in ``order`` of the steps that depend on it
    (ascending): the only steps its change of status can make ready or blocked."""
    roots: tuple[int, ...]
    """The positions in ``order`` of the steps with no dependency."""
    sinks: tuple[str, ...]
    """Steps no other step depends on, in declaration order (:func:`~apex.domain.graph.sinks`)."""
    last_first: tuple[str, ...]
    """``order`` reversed: the steps usually the last to finish come first."""


_GRAPHS: dict[int, tuple[WorkflowDefinition, StepGraph]] = {}
_GRAPHS_KEPT = 256


def step_graph(definition: WorkflowDefinition) -> StepGraph:
    """The definition's :class:`StepGraph`; raises ``DefinitionError`` when it has no order.

    Ordering the steps validates the graph, which costs more than the rest of a
    run's decisions together; runs of one workflow share its definition object,
    so the result is kept by the object's identity (a definition is frozen, and
    the entry holds it, so its id cannot be reused while the entry exists). The
    maps are shared between runs: nothing mutates them.
    """
    kept = _GRAPHS.get(id(definition))
    if kept is not None and kept[0] is definition:
        return kept[1]
    order = topological_order(definition)
    step_defs = {s.id: s for s in definition.steps}
    dependencies = tuple((sid, step_defs[sid].depends_on) for sid in order)
    dependents: dict[str, set[int]] = {sid: set() for sid in order}
    for position, (_, deps) in enumerate(dependencies):
        for dep in deps:
            dependents[dep].add(position)
    graph = StepGraph(
        order=order,
        step_defs=step_defs,
        not_started={s.id: _NOT_STARTED for s in definition.steps},
        dependencies=dependencies,
        dependents={sid: tuple(sorted(after)) for sid, after in dependents.items()},
        roots=tuple(position for position, (_, deps) in enumerate(dependencies) if not deps),
        sinks=sinks(definition),
        last_first=order[::-1],
    )
    if len(_GRAPHS) >= _GRAPHS_KEPT:
        _GRAPHS.clear()
    _GRAPHS[id(definition)] = (definition, graph)
    return graph


_ATTEMPT_TIMERS = frozenset({"step_timeout"})
_RETRY_TIMERS = frozenset({"retry"})
_APPROVAL_TIMERS = frozenset({"approval_deadline"})
_SIGNAL_TIMERS = frozenset({"signal_deadline"})
_ALL_STEP_TIMERS = frozenset({"step_timeout", "retry", "approval_deadline", "signal_deadline"})


def _finish_run(
    d: RunDraft, e: ev.Event, status: RunStatus, outputs: JSON, error: str | None
) -> None:
    d.status = status
    d.timers = _NO_TIMERS
    d.outputs = outputs
    d.error = error
    d.finished_at_ms = e.occurred_at_ms


def _run_completed(d: RunDraft, e: ev.RunCompleted) -> None:
    _finish_run(d, e, RunStatus.COMPLETED, e.outputs, d.error)


def _run_failed(d: RunDraft, e: ev.RunFailed) -> None:
    _finish_run(d, e, RunStatus.FAILED, d.outputs, e.error)


def _run_cancelled(d: RunDraft, e: ev.RunCancelled) -> None:
    _finish_run(d, e, RunStatus.CANCELLED, d.outputs, e.reason)


# The four rules every step of every run goes through build StepState by
# position (a quarter cheaper than ``_step_changed``); the order is checked above.


def _step_scheduled(d: RunDraft, e: ev.StepScheduled) -> None:
    o = d.steps[e.step_id]
    if o is _NOT_STARTED:
        d.steps[e.step_id] = _SCHEDULED_FIRST
        return
    d.steps[e.step_id] = _new_step(
        _SCHEDULED, o.attempt, o.input, o.output, o.error, o.worker_id,
        o.last_activity_ms, o.approval_granted, o.gate, o.signal_payload, o.started_at_ms,
        o.finished_at_ms,
    )  # fmt: skip


def _step_skipped(d: RunDraft, e: ev.StepSkipped) -> None:
    step = _step_changed(d.steps[e.step_id], status=_SKIPPED, finished_at_ms=e.occurred_at_ms)
    d.steps[e.step_id] = step


def _step_dispatched(d: RunDraft, e: ev.StepDispatched) -> None:
    o = d.steps[e.step_id]
    started_at = o.started_at_ms if o.started_at_ms is not None else e.occurred_at_ms
    d.steps[e.step_id] = _new_step(
        _DISPATCHED, e.attempt, e.input, o.output, o.error, o.worker_id,
        e.occurred_at_ms, o.approval_granted, o.gate, o.signal_payload, started_at,
        o.finished_at_ms,
    )  # fmt: skip
    d.drop_timers(e.step_id, _RETRY_TIMERS)


def _step_started(d: RunDraft, e: ev.StepStarted) -> None:
    o = d.steps[e.step_id]
    # A 'started' delivered after a heartbeat is not a later sign of life: the
    # timeout never counts from further back than it already does.
    last = o.last_activity_ms
    if last is None or e.occurred_at_ms > last:
        last = e.occurred_at_ms
    d.steps[e.step_id] = _new_step(
        _RUNNING, o.attempt, o.input, o.output, o.error, e.worker_id,
        last, o.approval_granted, o.gate, o.signal_payload, o.started_at_ms,
        o.finished_at_ms,
    )  # fmt: skip


def _step_heartbeat(d: RunDraft, e: ev.StepHeartbeat) -> None:
    d.steps[e.step_id] = _step_changed(d.steps[e.step_id], last_activity_ms=e.occurred_at_ms)


def _step_succeeded(d: RunDraft, e: ev.StepSucceeded) -> None:
    o = d.steps[e.step_id]
    d.steps[e.step_id] = _new_step(
        _SUCCEEDED, o.attempt, o.input, e.output, None, o.worker_id,
        o.last_activity_ms, o.approval_granted, o.gate, o.signal_payload, o.started_at_ms,
        e.occurred_at_ms,
    )  # fmt: skip
    d.drop_timers(e.step_id, _ATTEMPT_TIMERS)


def _step_retry_scheduled(d: RunDraft, e: ev.StepRetryScheduled) -> None:
    step = _step_changed(
        d.steps[e.step_id], status=_RETRY_WAIT, attempt=e.next_attempt, error=e.error
    )
    d.steps[e.step_id] = step
    d.drop_timers(e.step_id, _ATTEMPT_TIMERS)


def _step_failed(d: RunDraft, e: ev.StepFailed) -> None:
    step = _step_changed(
        d.steps[e.step_id], status=_FAILED, error=e.error, finished_at_ms=e.occurred_at_ms
    )
    d.steps[e.step_id] = step
    d.drop_timers(e.step_id, _ALL_STEP_TIMERS)


def _step_timed_out(d: RunDraft, e: ev.StepTimedOut) -> None:
    d.drop_timers(e.step_id, _ATTEMPT_TIMERS)


def _step_cancelled(d: RunDraft, e: ev.StepCancelled) -> None:
    step = _step_changed(
        d.steps[e.step_id], status=_CANCELLED, error=e.reason, finished_at_ms=e.occurred_at_ms
    )
    d.steps[e.step_id] = step
    d.drop_timers(e.step_id, _ALL_STEP_TIMERS)


def _approval_requested(d: RunDraft, e: ev.ApprovalRequested) -> None:
    step = _step_changed(d.steps[e.step_id], status=_AWAITING_APPROVAL, gate=e.when)
    d.steps[e.step_id] = step


def _approval_granted(d: RunDraft, e: ev.ApprovalGranted) -> None:
    old = d.steps[e.step_id]
    # A gate after the step held its output until now; a gate before it
    # releases the step for dispatch, which the decider emits next.
    status = _SUCCEEDED if old.gate is GateWhen.AFTER else _SCHEDULED
    d.steps[e.step_id] = _step_changed(old, status=status, approval_granted=True, gate=None)
    d.drop_timers(e.step_id, _APPROVAL_TIMERS)


def _approval_rejected(d: RunDraft, e: ev.ApprovalRejected) -> None:
    d.drop_timers(e.step_id, _APPROVAL_TIMERS)


def _signal_awaited(d: RunDraft, e: ev.SignalAwaited) -> None:
    d.steps[e.step_id] = _step_changed(d.steps[e.step_id], status=_AWAITING_SIGNAL)


def _signal_received(d: RunDraft, e: ev.SignalReceived) -> None:
    d.signal_command_ids = d.signal_command_ids | {e.causation_id}
    if e.step_id is None:
        d.signals = (*d.signals, BufferedSignal(e.name, e.payload, e.correlation_key))
        return
    # Releasing a step consumes the first matching buffered signal, if it came early.
    signals = list(d.signals)
    for i, sig in enumerate(signals):
        if sig.name == e.name and sig.correlation_key == e.correlation_key:
            del signals[i]
            break
    d.signals = tuple(signals)
    step = _step_changed(d.steps[e.step_id], status=_SCHEDULED, signal_payload=e.payload)
    d.steps[e.step_id] = step
    d.drop_timers(e.step_id, _SIGNAL_TIMERS)


def _timer_scheduled(d: RunDraft, e: ev.TimerScheduled) -> None:
    timer = _new_timer(e.timer_id, e.fire_at_ms, e.purpose, e.step_id, e.attempt)
    d.timers = {**d.timers, e.timer_id: timer}


def _timer_fired(d: RunDraft, e: ev.TimerFired) -> None:
    if e.timer_id in d.timers:
        d.timers = {tid: timer for tid, timer in d.timers.items() if tid != e.timer_id}


def _command_rejected(d: RunDraft, e: ev.CommandRejected) -> None:
    pass  # a refusal is in the log (and takes a seq), and changes nothing else


_APPLY: dict[type[ev.Event], Callable[[RunDraft, Any], None]] = {
    ev.RunCompleted: _run_completed,
    ev.RunFailed: _run_failed,
    ev.RunCancelled: _run_cancelled,
    ev.StepScheduled: _step_scheduled,
    ev.StepSkipped: _step_skipped,
    ev.StepDispatched: _step_dispatched,
    ev.StepStarted: _step_started,
    ev.StepHeartbeat: _step_heartbeat,
    ev.StepSucceeded: _step_succeeded,
    ev.StepRetryScheduled: _step_retry_scheduled,
    ev.StepFailed: _step_failed,
    ev.StepTimedOut: _step_timed_out,
    ev.StepCancelled: _step_cancelled,
    ev.ApprovalRequested: _approval_requested,
    ev.ApprovalGranted: _approval_granted,
    ev.ApprovalRejected: _approval_rejected,
    ev.SignalAwaited: _signal_awaited,
    ev.SignalReceived: _signal_received,
    ev.TimerScheduled: _timer_scheduled,
    ev.TimerFired: _timer_fired,
    ev.CommandRejected: _command_rejected,
}


def fold_rule(event_type: type[ev.Event]) -> Callable[[RunDraft, Any], None]:
    """How :meth:`RunDraft.apply` folds an event of ``event_type``, without its checks.

    For a caller that builds each event as its draft's next one — of the draft's
    run, with the next ``seq``, naming a step the run has — as the decider does:
    it calls the rule, then sets the draft's ``seq`` to the event's.
    """
    return _APPLY[event_type]


def retire(state: RunState) -> RunState:
    """A finished run, reduced to what deciding any later command reads.

    Once a run has finished, the decider only answers with nothing or a
    ``CommandRejected`` — it reads the status, seq, correlation id and what
    identifies a repeated ``StartRun`` — so a long-lived orchestrator keeps this
    instead of the whole state. The definition object is shared, not copied.
    """
    if not state.status.finished:
        raise ValueError(f"run {state.run_id} is {state.status.value}: only a finished run retires")
    return RunState(
        run_id=state.run_id,
        definition=state.definition,
        input=None,
        idempotency_key=state.idempotency_key,
        jitter_seed=state.jitter_seed,
        correlation_id=state.correlation_id,
        start_command_id=state.start_command_id,
        started_at_ms=state.started_at_ms,
        seq=state.seq,
        status=state.status,
        steps=_NO_STEPS,
        timers=_NO_TIMERS,
        order=(),
        step_defs=_NO_STEP_DEFS,
        signal_command_ids=_NO_SIGNAL_IDS,
        error=state.error,
        finished_at_ms=state.finished_at_ms,
    )
