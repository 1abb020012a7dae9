"""``decide(state, command) -> events``: what a command does to a run.

Pure: no I/O, no clock (time is ``command.issued_at_ms``), no randomness (the
retry jitter is drawn from the seed on ``StartRun``). Every event the decider
emits is folded by :func:`~apex.domain.state.evolve`'s rules (into one
:class:`~apex.domain.state.RunDraft` per command) before the next one is
chosen, so the decision and the fold can never disagree.

What a command that cannot apply yields:

* **nothing** when it is a harmless repeat under at-least-once delivery: the
  same ``StartRun`` again (same command id or idempotency key), a report for an
  attempt that is already finished or superseded (stale), a heartbeat that does
  not move the attempt's last sign of life (a repeat, or one overtaken by a
  later report), a ``SendSignal`` whose command was already accepted, a
  ``FireTimer`` for a timer that already fired or no longer matters, an
  approval of a step already approved, a rejection of a step already rejected,
  a cancel of a cancelled run, and any worker report or timer for a finished run.
* **CommandRejected** with the reason otherwise: an unknown run or workflow, a
  start whose definition has no order (a cycle, an unknown dependency, a
  duplicate step id), a start whose input breaks the input contract, a run id
  reused by another start, an unknown step, an attempt from the future (one
  never dispatched, also while the step waits to retry), an approval or
  rejection of a step that is not waiting for one, a signal no step waits for,
  and any cancel, signal or approval for a finished run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields
from heapq import heappop, heappush
from typing import Any, TypeVar

from apex.domain import commands as cmd
from apex.domain import events as ev
from apex.domain.definitions import JSON, FailurePolicy, GateWhen, Ref, StepDefinition
from apex.domain.errors import DefinitionError
from apex.domain.frozen import building, constructor
from apex.domain.rules import backoff_ms, contract_violations, holds, resolve, resolve_inputs
from apex.domain.state import (
    FoldError,
    RunDraft,
    RunState,
    RunStatus,
    StepState,
    StepStatus,
    evolve,
    fold_rule,
    step_graph,
)

_FINISHED_STEP = frozenset(status for status in StepStatus if status.finished)
_ACTIVE_STEP = frozenset(status for status in StepStatus if status.active)
_RUN_RUNNING = RunStatus.RUNNING

E = TypeVar("E", bound=ev.Event)

# ``StepStatus.X`` costs ~300 ns (``EnumType.__getattr__`` takes enum class
# lookups off CPython's fast path): the decider reads the members from module names.
_PENDING = StepStatus.PENDING
_SCHEDULED = StepStatus.SCHEDULED
_AWAITING_SIGNAL = StepStatus.AWAITING_SIGNAL
_AWAITING_APPROVAL = StepStatus.AWAITING_APPROVAL
_DISPATCHED = StepStatus.DISPATCHED
_RETRY_WAIT = StepStatus.RETRY_WAIT
_SUCCEEDED = StepStatus.SUCCEEDED
_SKIPPED = StepStatus.SKIPPED
_FAILED = StepStatus.FAILED
_CANCELLED = StepStatus.CANCELLED


def decide(state: RunState | None, command: cmd.Command) -> list[ev.Event]:
    """The events ``command`` causes in the run whose state is ``state``."""
    return decide_and_evolve(state, command)[0]


def decide_and_evolve(
    state: RunState | None, command: cmd.Command
) -> tuple[list[ev.Event], RunState | None]:
    """:func:`decide`, and the state its events lead to: ``fold(events, state)``.

    The decider folds each event it emits anyway; a caller that keeps the state
    (the orchestrator) takes it from here instead of folding the events again.
    """
    if isinstance(command, cmd.StartRun):
        return _start(state, command)
    if state is None:
        return [_rejection_without_run(command, f"unknown run {command.run_id!r}")], None
    decision = _Decision(state, command)
    if state.status is not _RUN_RUNNING:  # finished
        _on_finished_run(decision, command)
    else:
        _HANDLERS[type(command)](decision, command)
    events = decision.events
    return events, decision.run.freeze() if events else state


class _Decision:
    """Events chosen so far, and the run they lead to.

    ``run`` is the run as the events so far leave it, once it exists (read it
    only then): a draft every emitted event is folded into, so that one command
    builds one ``RunState`` (:meth:`state`), not one per event.
    """

    __slots__ = ("command", "events", "given", "run")

    def __init__(self, state: RunState | None, command: cmd.Command) -> None:
        self.given = state
        if state is not None:
            if command.run_id != state.run_id:
                raise FoldError(f"command for run {command.run_id} given run {state.run_id}")
            self.run: RunDraft = RunDraft(state)
        self.command = command
        self.events: list[ev.Event] = []

    def state(self) -> RunState | None:
        """The state the events lead to: the one given when there are none."""
        return self.run.freeze() if self.events else self.given

    @property
    def now(self) -> int:
        return self.command.issued_at_ms

    def begin(self, started: ev.RunStarted) -> None:
        """The run begins with ``started``; raises as folding it does (see :func:`_start`)."""
        run = evolve(None, started)
        assert run is not None, "RunStarted always leaves a state"
        self.run = RunDraft(run)
        self.events.append(started)

    def reject(self, reason: str) -> None:
        _emit[ev.CommandRejected](self, command_type=type(self.command).__name__, reason=reason)

    def outputs(self) -> Mapping[str, JSON]:
        return _Outputs(self.run.steps)


class _Outputs(Mapping[str, JSON]):
    """The step outputs a reference can read: of steps that succeeded (or wait for
    approval after succeeding), read from the step states as they are looked up.

    References read one or two outputs; copying every step's into a dict for each
    dispatch cost more than resolving them.
    """

    __slots__ = ("_steps",)

    def __init__(self, steps: Mapping[str, StepState]) -> None:
        self._steps = steps

    def get(self, step_id: str, default: Any = None, /) -> Any:
        st = self._steps.get(step_id)
        if st is None or st.output is None or st.status not in _HAS_OUTPUT:
            return default
        return st.output

    def __getitem__(self, step_id: str) -> JSON:
        value = self.get(step_id, _NO_OUTPUT)
        if value is _NO_OUTPUT:
            raise KeyError(step_id)
        return value

    def __iter__(self) -> Iterator[str]:
        return (sid for sid in self._steps if self.get(sid, _NO_OUTPUT) is not _NO_OUTPUT)

    def __len__(self) -> int:
        return sum(1 for _ in self)


_HAS_OUTPUT = frozenset({StepStatus.SUCCEEDED, StepStatus.AWAITING_APPROVAL})
_NO_OUTPUT: Any = object()


# -- emitting an event ------------------------------------------------------------------
#
# ``_emit[ev.StepStarted](d, step_id=..., attempt=..., worker_id=...)`` emits the
# run's next event and folds it into the decision's draft. One function per event
# type, generated from the type's fields (as dataclasses and
# :func:`~apex.domain.frozen.constructor` generate theirs): the type's own fields
# are its parameters, so a call binds them by name without the dict of keyword
# arguments that a generic ``emit(event_type, **fields)`` builds and spreads
# again, which was half of emitting an event — and every command emits some.
#
# The event is built as the draft's next one — the next ``seq``, and a step the
# run has (handlers name no other) — so its rule folds it without
# ``RunDraft.apply``'s checks of those. Only the run id comes from outside (the
# command): ``_Decision`` checks it once, for all the command's events.

_EMITTER_SOURCE = """\
def emit(d, {own}):
    command = d.command
    run = d.run
    run_id = run.run_id  # the command's: checked once, by _Decision
    seq = run.seq + 1
{build}    d.events.append(event)
    rule(run, event)
    run.seq = seq
    return event
"""
_HEADER = tuple(f.name for f in fields(ev.Event))
"""The fields every event starts with, which ``emit`` fills from the decision."""
_HEADER_VALUES = (
    "run_id", "seq", "command.command_id", "run.correlation_id", "command.issued_at_ms"
)  # fmt: skip
"""What ``emit`` fills them with: the run's next event, caused by the decision's command."""


def _emitter(event_type: type[E]) -> Callable[..., E]:
    names = [f.name for f in fields(event_type)]
    if tuple(names[: len(_HEADER)]) != _HEADER:
        raise TypeError(f"{event_type.__name__} does not start with the fields of Event")
    own = names[len(_HEADER) :]
    new = constructor(event_type)  # checks that the statements below build an event_type
    # The event is built in ``emit`` itself, not by calling ``new``: one call less
    # for every event.
    build, namespace = building(event_type, "event", (*_HEADER_VALUES, *own))
    namespace.update(rule=fold_rule(event_type))
    exec(_EMITTER_SOURCE.format(own=", ".join(own), build=build), namespace)
    emit: Callable[..., E] = namespace["emit"]
    emit.__defaults__ = new.__defaults__  # the defaults of the trailing fields that have one
    emit.__qualname__ = emit.__name__ = f"emit_{event_type.__name__}"
    return emit


_emit: dict[type[ev.Event], Callable[..., Any]] = {
    t: _emitter(t) for t in ev.EVENT_TYPES if t is not ev.RunStarted
}
"""Each event type's ``emit(decision, **its own fields)`` (a run begins with
``RunStarted`` by :meth:`_Decision.begin`)."""


def _rejection_without_run(command: cmd.Command, reason: str) -> ev.CommandRejected:
    return ev.CommandRejected(
        run_id=command.run_id,
        seq=0,
        causation_id=command.command_id,
        correlation_id=command.correlation_id or command.run_id,
        occurred_at_ms=command.issued_at_ms,
        command_type=type(command).__name__,
        reason=reason,
    )


# -- starting and finishing runs ---------------------------------------------------------

_new_run_started = constructor(ev.RunStarted)
"""``RunStarted``'s fast constructor (:mod:`apex.domain.frozen`): one for every run."""


def _start(state: RunState | None, c: cmd.StartRun) -> tuple[list[ev.Event], RunState | None]:
    if state is not None:
        if c.command_id == state.start_command_id or (
            c.idempotency_key and c.idempotency_key == state.idempotency_key
        ):
            return [], state
        decision = _Decision(state, c)
        decision.reject(
            f"run {c.run_id!r} already exists (started by command {state.start_command_id!r}"
            f" with another idempotency key)"
        )
        return decision.events, decision.state()
    definition = c.definition
    if definition is None:
        version = "latest" if c.definition_version is None else c.definition_version
        reason = f"unknown workflow definition {c.definition_name}@{version}"
        return [_rejection_without_run(c, reason)], None
    if definition.input:
        problems = contract_violations(definition.input, c.input)
        if problems:
            return [
                _rejection_without_run(
                    c,
                    f"input does not match {definition.key}'s input contract: "
                    + "; ".join(problems),
                )
            ], None
    d = _Decision(None, c)
    try:
        d.begin(
            _new_run_started(
                run_id=c.run_id,
                seq=1,
                causation_id=c.command_id,
                correlation_id=c.correlation_id or c.run_id,
                occurred_at_ms=c.issued_at_ms,
                definition=definition,
                input=c.input,
                idempotency_key=c.idempotency_key,
                jitter_seed=c.jitter_seed,
            )
        )
    except ValueError as exc:
        # Folding RunStarted orders the steps (graph.topological_order): a cycle, an
        # unknown dependency or a duplicate step id leaves no order. Refuse the start
        # rather than raise, so one bad definition cannot stop the orchestrator.
        detail = "; ".join(map(str, exc.problems)) if isinstance(exc, DefinitionError) else str(exc)
        reason = f"workflow definition {definition.key} is invalid: {detail}"
        return [_rejection_without_run(c, reason)], None
    if definition.timeout_ms is not None:
        _timer(d, "run:timeout", d.now + definition.timeout_ms, "run_timeout", None, None)
    _advance(d)
    return d.events, d.state()


def _on_finished_run(d: _Decision, c: cmd.Command) -> None:
    status = d.run.status
    if isinstance(c, cmd.CancelRun) and status is RunStatus.CANCELLED:
        return
    if isinstance(
        c,
        cmd.ReportTaskStarted
        | cmd.ReportTaskHeartbeat
        | cmd.ReportTaskSucceeded
        | cmd.ReportTaskFailed
        | cmd.FireTimer,
    ):
        return
    d.reject(f"run {c.run_id!r} is already {status.value}")


def _advance(d: _Decision) -> None:
    """Schedule each pending step whose dependencies are done, cancel each one with a
    dependency that failed or was cancelled; finish the run when every step is finished.

    Only a pending step with a dependency that finished in this decision can have
    become either: every decision that finishes a step ends here, so no run rests
    with a pending step that could be scheduled or cancelled (the property tests
    check it after every command). So the steps looked at are the dependents of
    each step that this decision's events name and that is now finished — and on a
    run's start, the steps without dependencies — in topological order (the order
    of a scan of every step): a step cancelled or skipped here adds its own.
    """
    run = d.run
    if run.status is not _RUN_RUNNING:  # finished
        return
    graph = step_graph(run.definition)
    dependencies, dependents = graph.dependencies, graph.dependents
    steps = run.steps  # the draft's own map: each emit changes it in place
    events = d.events
    due = list(graph.roots) if d.given is None else []  # a heap of positions in the order
    looked_at = -1
    read = 0
    while True:
        while read < len(events):  # the events emitted since the last look
            sid = getattr(events[read], "step_id", None)
            read += 1
            if sid is not None and steps[sid].status in _FINISHED_STEP:
                for position in dependents[sid]:
                    heappush(due, position)
        if not due:
            break
        position = heappop(due)
        if position == looked_at:  # named twice (a join)
            continue
        looked_at = position
        sid, deps = dependencies[position]
        if steps[sid].status is not _PENDING:
            continue
        blocked = None
        ready = True
        for dep in deps:
            dep_status = steps[dep].status
            if dep_status is _FAILED or dep_status is _CANCELLED:
                blocked = f"upstream step {dep!r} {dep_status.value}"
                break
            if dep_status is not _SUCCEEDED and dep_status is not _SKIPPED:
                ready = False
        if blocked is not None:
            _emit[ev.StepCancelled](d, step_id=sid, reason=blocked, was_running=False)
        elif ready:
            _schedule(d, sid)
    for sid in graph.last_first:
        if steps[sid].status not in _FINISHED_STEP:
            return
    _finish(d)


def _finish(d: _Decision) -> None:
    run = d.run
    failed = [sid for sid in run.order if run.steps[sid].status is _FAILED]
    if failed:
        first = run.steps[failed[0]]
        _emit[ev.RunFailed](
            d,
            error=f"step {failed[0]!r} failed: {first.error}"
            + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""),
            step_id=failed[0],
        )
        return
    outputs = d.outputs()
    definition = run.definition
    if definition.outputs:
        result = {
            name: resolve(ref, run.input, outputs) for name, ref in definition.outputs.items()
        }
    else:
        result = {sid: outputs[sid] for sid in step_graph(definition).sinks if sid in outputs}
    _emit[ev.RunCompleted](d, outputs=result)


def _cancel_unfinished(d: _Decision, reason: str) -> None:
    for sid in d.run.order:
        st = d.run.steps[sid]
        if not st.status.finished:
            _emit[ev.StepCancelled](d, step_id=sid, reason=reason, was_running=st.status.active)


# -- a step's way to dispatch: condition, signal, gate, dispatch ------------------------------


def _schedule(d: _Decision, sid: str) -> None:
    _emit[ev.StepScheduled](d, step_id=sid)
    step = d.run.step_defs[sid]
    if step.condition is not None and not holds(step.condition, d.run.input, d.outputs()):
        cond = step.condition
        shown = "" if cond.value is None else f" {cond.value!r}"
        _emit[ev.StepSkipped](
            d,
            step_id=sid,
            reason=f"condition {cond.ref} {cond.op.value}{shown} is false",
        )
        return
    if step.wait_for_signal is not None:
        wait = step.wait_for_signal
        expected = _expected_correlation(d, step)
        for signal in d.run.signals:
            if signal.name == wait.name and _correlates(expected, signal.correlation_key):
                _emit[ev.SignalReceived](
                    d,
                    name=signal.name,
                    payload=signal.payload,
                    correlation_key=signal.correlation_key,
                    step_id=sid,
                )
                break
        else:
            deadline = None if wait.deadline_ms is None else d.now + wait.deadline_ms
            _emit[ev.SignalAwaited](
                d,
                step_id=sid,
                name=wait.name,
                correlation_key=expected,
                deadline_at_ms=deadline,
            )
            if deadline is not None:
                _timer(d, f"{sid}:signal", deadline, "signal_deadline", sid, None)
            return
    _gate_or_dispatch(d, step)


def _gate_or_dispatch(d: _Decision, step: StepDefinition) -> None:
    gate = step.approval
    if (
        gate is not None
        and gate.when is GateWhen.BEFORE
        and (gate.condition is None or holds(gate.condition, d.run.input, d.outputs()))
    ):
        _request_approval(d, step.id, GateWhen.BEFORE)
    else:
        _dispatch(d, step, 1)


def _request_approval(d: _Decision, sid: str, when: GateWhen) -> None:
    gate = d.run.step_defs[sid].approval
    assert gate is not None
    deadline = None if gate.deadline_ms is None else d.now + gate.deadline_ms
    _emit[ev.ApprovalRequested](d, step_id=sid, when=when, deadline_at_ms=deadline)
    if deadline is not None:
        _timer(d, f"{sid}:approval", deadline, "approval_deadline", sid, None)


def _dispatch(d: _Decision, step: StepDefinition, attempt: int) -> None:
    sid = step.id
    st = d.run.steps[sid]
    if attempt > 1 and st.input is not None:
        task_input = st.input
    else:
        task_input = resolve_inputs(step.inputs, d.run.input, d.outputs())
        if step.wait_for_signal is not None and "signal" not in task_input:
            task_input["signal"] = st.signal_payload
    _emit[ev.StepDispatched](
        d,
        step_id=sid,
        attempt=attempt,
        capability=step.capability,
        input=task_input,
        timeout_ms=step.timeout_ms,
    )
    if step.timeout_ms is not None:
        _schedule_timeout(d, sid)


def _schedule_timeout(d: _Decision, sid: str) -> None:
    st = d.run.steps[sid]
    timeout = d.run.step_defs[sid].timeout_ms
    assert timeout is not None and st.last_activity_ms is not None
    deadline = st.last_activity_ms + timeout
    _timer(d, f"{sid}#{st.attempt}:timeout@{deadline}", deadline, "step_timeout", sid, st.attempt)


def _timer(
    d: _Decision, timer_id: str, at: int, purpose: str, sid: str | None, attempt: int | None
) -> None:
    _emit[ev.TimerScheduled](
        d,
        timer_id=timer_id,
        fire_at_ms=at,
        purpose=purpose,
        step_id=sid,
        attempt=attempt,
    )


def _expected_correlation(d: _Decision, step: StepDefinition) -> str | None:
    wait = step.wait_for_signal
    if wait is None or wait.correlation is None:
        return None
    if isinstance(wait.correlation, Ref):
        value = resolve(wait.correlation, d.run.input, d.outputs())
        return None if value is None else str(value)
    return wait.correlation


def _correlates(expected: str | None, key: str | None) -> bool:
    """A signal reaches a waiting step unless both name a correlation key and they differ."""
    return expected is None or key is None or expected == key


# -- failures -----------------------------------------------------------------------------


def _attempt_failed(d: _Decision, sid: str, attempt: int, error: str, retryable: bool) -> None:
    policy = d.run.step_defs[sid].retry
    if retryable and attempt < policy.max_attempts:
        delay = backoff_ms(policy, attempt, d.run.jitter_seed, sid)
        _emit[ev.StepRetryScheduled](
            d,
            step_id=sid,
            failed_attempt=attempt,
            next_attempt=attempt + 1,
            backoff_ms=delay,
            error=error,
        )
        _timer(d, f"{sid}#{attempt + 1}:retry", d.now + delay, "retry", sid, attempt + 1)
    else:
        _step_failed(d, sid, attempt, error, retryable)


def _step_failed(d: _Decision, sid: str, attempt: int, error: str, retryable: bool) -> None:
    _emit[ev.StepFailed](d, step_id=sid, attempt=attempt, error=error, retryable=retryable)
    if d.run.definition.failure_policy is FailurePolicy.FAIL_FAST:
        _cancel_unfinished(d, f"step {sid!r} failed")
        _emit[ev.RunFailed](d, error=f"step {sid!r} failed: {error}", step_id=sid)


# -- command handlers -----------------------------------------------------------------------


def _cancel(d: _Decision, c: cmd.CancelRun) -> None:
    reason = c.reason or "cancelled"
    _cancel_unfinished(d, reason)
    _emit[ev.RunCancelled](d, reason=reason)


def _signal(d: _Decision, c: cmd.SendSignal) -> None:
    run = d.run
    if c.command_id in run.signal_command_ids:
        return  # delivered again: its SignalReceived is already in the log
    candidates = [
        s
        for s in run.definition.steps
        if s.wait_for_signal is not None and s.wait_for_signal.name == c.name
    ]
    if not candidates:
        d.reject(f"no step of {run.definition.key} waits for signal {c.name!r}")
        return
    open_steps = [
        s for s in candidates if run.steps[s.id].status in (_PENDING, _SCHEDULED, _AWAITING_SIGNAL)
    ]
    if not open_steps:
        d.reject(f"every step waiting for signal {c.name!r} is past its wait")
        return
    for step in open_steps:
        expected = _expected_correlation(d, step)
        waiting = run.steps[step.id].status is _AWAITING_SIGNAL
        if waiting and _correlates(expected, c.correlation_key):
            _emit[ev.SignalReceived](
                d,
                name=c.name,
                payload=c.payload,
                correlation_key=c.correlation_key,
                step_id=step.id,
            )
            _gate_or_dispatch(d, step)
            _advance(d)
            return
    # Early: keep it until a step starts waiting for it.
    _emit[ev.SignalReceived](
        d,
        name=c.name,
        payload=c.payload,
        correlation_key=c.correlation_key,
        step_id=None,
    )


def _waiting_step(d: _Decision, step_id: str) -> StepState | None:
    st = d.run.steps.get(step_id)
    if st is None:
        d.reject(f"{d.run.definition.key} has no step {step_id!r}")
    return st


def _approve(d: _Decision, c: cmd.ApproveStep) -> None:
    st = _waiting_step(d, c.step_id)
    if st is None:
        return
    if st.status is not _AWAITING_APPROVAL:
        if not st.approval_granted:
            d.reject(f"step {c.step_id!r} is not waiting for approval (it is {st.status.value})")
        return
    when = st.gate
    _emit[ev.ApprovalGranted](d, step_id=c.step_id, approver=c.approver, comment=c.comment)
    if when is GateWhen.BEFORE:
        _dispatch(d, d.run.step_defs[c.step_id], 1)
    _advance(d)


def _reject_step(d: _Decision, c: cmd.RejectStep) -> None:
    st = _waiting_step(d, c.step_id)
    if st is None:
        return
    if st.status is not _AWAITING_APPROVAL:
        already = st.status is _FAILED and (st.error or "").startswith("approval ")
        if not already:
            d.reject(f"step {c.step_id!r} is not waiting for approval (it is {st.status.value})")
        return
    _emit[ev.ApprovalRejected](d, step_id=c.step_id, approver=c.approver, reason=c.reason)
    who = c.approver or "an approver"
    _step_failed(d, c.step_id, st.attempt, f"approval rejected by {who}: {c.reason}", False)
    _advance(d)


def _reported_attempt(
    d: _Decision,
    c: cmd.ReportTaskStarted
    | cmd.ReportTaskHeartbeat
    | cmd.ReportTaskSucceeded
    | cmd.ReportTaskFailed,
) -> StepState | None:
    """The step if the report is for its current, active attempt; else handle and ``None``."""
    st = d.run.steps.get(c.step_id)  # _waiting_step, inline: every report comes here
    if st is None:
        d.reject(f"{d.run.definition.key} has no step {c.step_id!r}")
        return None
    # While a step waits to retry, ``attempt`` already names the next attempt,
    # which has not been dispatched yet.
    dispatched = st.attempt - 1 if st.status is _RETRY_WAIT else st.attempt
    if c.attempt > dispatched:
        d.reject(
            f"step {c.step_id!r} attempt {c.attempt} was never dispatched"
            f" (current attempt is {dispatched})"
        )
        return None
    if c.attempt < st.attempt or st.status not in _ACTIVE_STEP:
        return None  # stale or repeated report
    return st


def _task_started(d: _Decision, c: cmd.ReportTaskStarted) -> None:
    st = _reported_attempt(d, c)
    if st is not None and st.status is _DISPATCHED:
        _emit[ev.StepStarted](d, step_id=c.step_id, attempt=c.attempt, worker_id=c.worker_id)


def _task_heartbeat(d: _Decision, c: cmd.ReportTaskHeartbeat) -> None:
    st = _reported_attempt(d, c)
    if st is None:
        return
    # Only a later sign of life moves the timeout: a heartbeat delivered twice, or
    # one overtaken by a later report, must neither repeat an event nor move it back.
    if st.last_activity_ms is None or c.issued_at_ms > st.last_activity_ms:
        _emit[ev.StepHeartbeat](d, step_id=c.step_id, attempt=c.attempt)


def _task_succeeded(d: _Decision, c: cmd.ReportTaskSucceeded) -> None:
    if _reported_attempt(d, c) is None:
        return
    step = d.run.step_defs[c.step_id]
    if step.output is not None:
        problems = contract_violations(step.output, c.output)
        if problems:
            error = "output breaks the step's output contract: " + "; ".join(problems)
            _attempt_failed(d, c.step_id, c.attempt, error, retryable=False)
            _advance(d)
            return
    _emit[ev.StepSucceeded](d, step_id=c.step_id, attempt=c.attempt, output=c.output)
    gate = step.approval
    if (
        gate is not None
        and gate.when is GateWhen.AFTER
        and (gate.condition is None or holds(gate.condition, d.run.input, d.outputs()))
    ):
        _request_approval(d, c.step_id, GateWhen.AFTER)
    _advance(d)


def _task_failed(d: _Decision, c: cmd.ReportTaskFailed) -> None:
    if _reported_attempt(d, c) is None:
        return
    _attempt_failed(d, c.step_id, c.attempt, c.error, c.retryable)
    _advance(d)


def _fire_timer(d: _Decision, c: cmd.FireTimer) -> None:
    timer = d.run.timers.get(c.timer_id)
    if timer is None:
        return  # already fired, or its reason is gone (step finished, approval given)
    _emit[ev.TimerFired](d, timer_id=c.timer_id)
    sid = timer.step_id
    if timer.purpose == "run_timeout":
        timeout = d.run.definition.timeout_ms
        _cancel_unfinished(d, "run timed out")
        _emit[ev.RunFailed](d, error=f"run timed out after {timeout} ms", step_id=None)
        return
    assert sid is not None, f"timer {c.timer_id} has no step"
    st = d.run.steps[sid]
    if timer.purpose == "retry":
        if st.status is _RETRY_WAIT and st.attempt == timer.attempt:
            _dispatch(d, d.run.step_defs[sid], st.attempt)
    elif timer.purpose == "step_timeout":
        if st.status.active and st.attempt == timer.attempt:
            timeout = d.run.step_defs[sid].timeout_ms or 0
            assert st.last_activity_ms is not None
            # A timer fired early (the timer service's clock is behind) is due at its
            # own deadline: rescheduling it at that same deadline would bring back the
            # timer id that just fired, and a repeated FireTimer would fire it again.
            now = max(d.now, timer.fire_at_ms)
            if now < st.last_activity_ms + timeout:
                _schedule_timeout(d, sid)  # a heartbeat moved the deadline
            else:
                _emit[ev.StepTimedOut](d, step_id=sid, attempt=st.attempt)
                error = f"attempt {st.attempt} timed out: no sign of life for {timeout} ms"
                _attempt_failed(d, sid, st.attempt, error, retryable=True)
    elif timer.purpose == "approval_deadline":
        if st.status is _AWAITING_APPROVAL:
            _emit[ev.ApprovalRejected](d, step_id=sid, approver="apex", reason="deadline passed")
            _step_failed(d, sid, st.attempt, "approval deadline passed", False)
    elif timer.purpose == "signal_deadline" and st.status is _AWAITING_SIGNAL:
        wait = d.run.step_defs[sid].wait_for_signal
        name = wait.name if wait is not None else "?"
        _step_failed(d, sid, st.attempt, f"signal {name!r} not received by its deadline", False)
    _advance(d)


_HANDLERS: dict[type[cmd.Command], Callable[[_Decision, Any], None]] = {
    cmd.CancelRun: _cancel,
    cmd.SendSignal: _signal,
    cmd.ApproveStep: _approve,
    cmd.RejectStep: _reject_step,
    cmd.ReportTaskStarted: _task_started,
    cmd.ReportTaskHeartbeat: _task_heartbeat,
    cmd.ReportTaskSucceeded: _task_succeeded,
    cmd.ReportTaskFailed: _task_failed,
    cmd.FireTimer: _fire_timer,
}
