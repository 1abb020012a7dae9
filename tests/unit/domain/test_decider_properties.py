"""Properties of the decider, on random valid DAGs driven by a random world.

The world (:class:`World`) plays workers, timers, approvers, signal senders and
an operator, consistently with the events seen so far: it reports on attempts
that were dispatched, fires timers that are pending, approves steps that wait.
It also misbehaves within a budget — duplicate, stale, future and
out-of-order reports, heartbeats, early and mis-correlated signals, approvals
of steps that do not wait, commands for unknown steps — and every such
command must get exactly the answer the decider's contract promises.

On every command (see :class:`RunDriver` too): ``seq`` is gapless from 1,
folding the history reproduces the state, a rejection changes nothing but
``seq``, no step is scheduled or dispatched before each of its dependencies
succeeded or was skipped, attempts are numbered 1, 2, ... with at most one
active at a time, and a finished run only ever answers with refusals. At the
end: the run is finished within a bound on the number of commands, a
completed run has every step succeeded or skipped, and replaying the same
commands yields the same events (the decider is pure).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from decider_strategies import RunDriver, of_type, values_for, workflow_dags
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from strategies import workflow_definitions

from apex.domain import commands as cmd
from apex.domain import events as ev
from apex.domain.decider import decide
from apex.domain.definitions import WorkflowDefinition
from apex.domain.state import RunState, RunStatus, StepStatus, evolve, fold

T = TypeVar("T")

# Budget: the whole file takes well under a minute of one core. The definitions
# of ``strategies.workflow_definitions`` (ids, contracts, literals, conditions of
# every kind) cost far more to draw than the world costs to play, so they get
# fewer examples than the feature-dense ``workflow_dags``.
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
WORLD_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=HEALTH)
WIDE_SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=HEALTH)
CHAOS_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=HEALTH)

WIDE_DEFINITIONS = workflow_definitions(
    max_steps=6, with_conditions=True, with_approvals=True, with_signals=True
)

REPORTS = (
    cmd.ReportTaskStarted,
    cmd.ReportTaskHeartbeat,
    cmd.ReportTaskSucceeded,
    cmd.ReportTaskFailed,
)
DONE = (StepStatus.SUCCEEDED, StepStatus.SKIPPED)


class World:
    """Everything around one run, playing by (and sometimes against) the rules."""

    def __init__(self, definition: WorkflowDefinition, data: st.DataObject) -> None:
        self.definition = definition
        self.data = data
        self.driver = RunDriver(definition)
        self.driver.observers.append(self.on_answer)
        self.noise_budget = self.draw(st.integers(0, 12), "noise budget")
        self.noise_left = self.noise_budget
        self.cancel_at = self.draw(
            st.sampled_from([None, None, None, 1, 5, 20, 60]), "cancel at command"
        )
        self.cancel_sent = False
        # What the events said so far, kept apart from the state to check it.
        self.dispatched: dict[str, int] = {}
        self.active: dict[str, int] = {}
        self.done_in_log: set[str] = set()
        self.awaited_key: dict[str, str | None] = {}
        self.resendable: list[cmd.Command] = []

    def draw(self, strategy: st.SearchStrategy[T], label: str) -> T:
        return self.data.draw(strategy, label=label)

    @property
    def run(self) -> RunState:
        return self.driver.run

    # -- the whole story -------------------------------------------------------------

    def play(self) -> None:
        run_input = self.draw(values_for(self.definition.input or None), "run input")
        if not isinstance(run_input, dict):
            run_input = {}
        seed = self.draw(st.integers(0, 2**63), "jitter seed")
        started = self.send(self._start(run_input, seed))
        assert isinstance(started[0], ev.RunStarted), started
        bound = self.bound()
        while self.run.status is RunStatus.RUNNING:
            assert len(self.driver.sent) < bound, f"no end after {bound} commands"
            self.tick()
        event(f"run {self.run.status.value}")
        self.check_finished()
        self.after_the_end()
        self.check_replay()

    def bound(self) -> int:
        """Commands enough to finish: per step a signal, an approval, their
        deadlines and per attempt start, result or timeout, retry timer; a
        start, run timeout and cancel; each noise command and the timer
        reschedule a heartbeat may cause."""
        per_step = sum(4 + 3 * s.retry.max_attempts for s in self.definition.steps)
        return 3 + per_step + 2 * self.noise_budget

    def tick(self) -> None:
        cancel_at = self.cancel_at
        if not self.cancel_sent and cancel_at is not None and len(self.driver.sent) >= cancel_at:
            self.cancel()
            return
        self.driver.later(self.draw(st.sampled_from([0, 1, 7, 100]), "ms pass"))
        progress = self.progress_moves()
        statuses = {sid: st_.status.value for sid, st_ in self.run.steps.items()}
        assert progress, f"the run is stuck: {statuses}, timers {list(self.run.timers)}"
        noise = dict(self.noise_moves() if self.noise_left else [])
        moves = dict(progress) | noise
        name = self.draw(st.sampled_from(sorted(moves)), "move")
        if name in noise:
            self.noise_left -= 1
        moves[name]()

    def _start(self, run_input: dict[str, Any], seed: int) -> cmd.StartRun:
        return cmd.StartRun(
            command_id="start",
            run_id=self.driver.run_id,
            issued_at_ms=0,
            correlation_id="corr",
            definition_name=self.definition.name,
            definition_version=self.definition.version,
            input=run_input,
            idempotency_key="idem",
            jitter_seed=seed,
            definition=self.definition,
        )

    # -- sending, and what every answer must satisfy --------------------------------------

    def send(self, command: cmd.Command) -> list[ev.Event]:
        return self.driver.send(command)

    def on_answer(
        self, before: RunState | None, command: cmd.Command, events: list[ev.Event]
    ) -> None:
        state = before
        for e in events:
            if e.seq > 0:
                self.observe(state, e)
                state = evolve(state, e)
        assert state == self.driver.state
        self.check_state()
        rejected = bool(events) and isinstance(events[0], ev.CommandRejected)
        if not (rejected and isinstance(command, (*REPORTS, cmd.ApproveStep, cmd.RejectStep))):
            # A refused report or approval may become valid later (the decider keeps
            # no list of command ids): only those are not "already processed".
            self.resendable.append(command)

    def observe(self, state: RunState | None, e: ev.Event) -> None:
        """One event, against the state before it and the events before it."""
        if state is None:
            return
        assert state.status is RunStatus.RUNNING or isinstance(e, ev.CommandRejected), e
        if isinstance(e, ev.StepScheduled | ev.StepDispatched):
            deps = self.definition.step(e.step_id).depends_on
            assert all(state.steps[d].status in DONE for d in deps), (e, state.steps)
            assert set(deps) <= self.done_in_log, e
        if isinstance(e, ev.StepDispatched):
            assert e.step_id not in self.active, f"second active attempt: {e}"
            assert e.attempt == self.dispatched.get(e.step_id, 0) + 1, e
            self.dispatched[e.step_id] = self.active[e.step_id] = e.attempt
        elif isinstance(e, ev.StepStarted | ev.StepHeartbeat | ev.StepTimedOut):
            assert self.active.get(e.step_id) == e.attempt, e
        elif isinstance(e, ev.StepSucceeded):
            assert self.active.pop(e.step_id) == e.attempt, e
            self.done_in_log.add(e.step_id)
        elif isinstance(e, ev.StepSkipped):
            self.done_in_log.add(e.step_id)
        elif isinstance(e, ev.StepRetryScheduled):
            assert self.active.pop(e.step_id) == e.failed_attempt, e
            assert e.next_attempt == e.failed_attempt + 1 and e.backoff_ms >= 1, e
        elif isinstance(e, ev.StepFailed):
            if e.step_id in self.active:
                assert self.active.pop(e.step_id) == e.attempt, e
        elif isinstance(e, ev.StepCancelled):
            assert e.was_running == (e.step_id in self.active), e
            self.active.pop(e.step_id, None)
        elif isinstance(e, ev.SignalAwaited):
            self.awaited_key[e.step_id] = e.correlation_key
        elif isinstance(e, ev.TimerScheduled):
            assert e.fire_at_ms >= e.occurred_at_ms, e

    def check_state(self) -> None:
        run = self.run
        active = {sid: s.attempt for sid, s in run.steps.items() if s.status.active}
        assert active == self.active
        if run.status.finished:
            assert all(s.status.finished for s in run.steps.values()), run.steps
            assert run.timers == {}

    def expect_nothing_or_refusal(self, events: list[ev.Event]) -> None:
        assert events == [] or (len(events) == 1 and isinstance(events[0], ev.CommandRejected)), (
            events
        )

    def expect_refusal(self, events: list[ev.Event], reason: str | None = None) -> None:
        assert len(events) == 1 and isinstance(events[0], ev.CommandRejected), events
        assert reason is None or events[0].reason == reason, (events[0].reason, reason)

    # -- moves that make progress ------------------------------------------------------------

    def progress_moves(self) -> list[tuple[str, Callable[[], None]]]:
        run = self.run
        moves: list[tuple[str, Callable[[], None]]] = []
        active = [sid for sid in run.order if run.steps[sid].status.active]
        if active:
            moves.append(("report", lambda: self.report(self.draw_from(active, "step"))))
        if run.timers:
            moves.append(("timer", self.fire_a_timer))
        approvals = [s for s in run.order if run.steps[s].status is StepStatus.AWAITING_APPROVAL]
        if approvals:
            moves.append(("approval", lambda: self.decide_approval(approvals)))
        signals = [s for s in run.order if run.steps[s].status is StepStatus.AWAITING_SIGNAL]
        if signals:
            moves.append(("signal", lambda: self.release_signal(signals)))
        return moves

    def report(self, sid: str) -> None:
        st_ = self.run.steps[sid]
        attempt, d = st_.attempt, self.driver
        # 0-10 success, 11 'started', 12-13 retryable failure, 14 final failure, 15 bad output
        outcome = self.draw(st.integers(0, 15), "outcome")
        contract = self.definition.step(sid).output
        if outcome == 11 and st_.status is StepStatus.DISPATCHED:
            assert [type(e) for e in d.started(sid, attempt)] == [ev.StepStarted]
        elif outcome in (12, 13, 14):
            retryable = outcome != 14
            events = d.fail(sid, attempt, f"error {outcome}", retryable=retryable)
            retries = retryable and attempt < self.definition.step(sid).retry.max_attempts
            assert type(events[0]) is (ev.StepRetryScheduled if retries else ev.StepFailed)
        elif outcome == 15:
            events = d.succeed(sid, attempt, output="not an object")
            expected = ev.StepSucceeded if contract is None else ev.StepFailed
            assert type(events[0]) is expected, events
        else:
            output = self.draw(values_for(contract), "output")
            events = d.succeed(sid, attempt, output=output)
            assert isinstance(events[0], ev.StepSucceeded) and events[0].output == output

    def fire_a_timer(self) -> None:
        # Mostly in time order: one of the two that are due first.
        due = sorted(self.run.timers.values(), key=lambda t: (t.fire_at_ms, t.timer_id))
        timer = self.draw(st.sampled_from(due[:2]), "timer")
        self.driver.at(max(self.driver.now, timer.fire_at_ms))
        events = self.driver.fire(timer.timer_id)
        assert isinstance(events[0], ev.TimerFired) and events[0].timer_id == timer.timer_id

    def decide_approval(self, waiting: list[str]) -> None:
        sid = self.draw(st.sampled_from(waiting), "approval of")
        if self.draw(st.integers(0, 3), "approve?") < 3:
            assert isinstance(self.driver.approve(sid)[0], ev.ApprovalGranted)
        else:
            events = self.driver.reject(sid)
            assert [type(e) for e in events[:2]] == [ev.ApprovalRejected, ev.StepFailed]

    def release_signal(self, waiting: list[str]) -> None:
        sid = self.draw(st.sampled_from(waiting), "signal for")
        wait = self.definition.step(sid).wait_for_signal
        assert wait is not None
        key = self.draw(st.sampled_from([self.awaited_key[sid], None]), "signal key")
        assert self.send_signal(wait.name, key, {"for": sid}) is not None

    def cancel(self) -> None:
        self.cancel_sent = True
        unfinished = [sid for sid in self.run.order if not self.run.steps[sid].status.finished]
        events = self.driver.cancel("the world changed its mind")
        assert [type(e) for e in events] == [ev.StepCancelled] * len(unfinished) + [ev.RunCancelled]

    # -- moves against the rules (within the noise budget) ---------------------------------------

    def noise_moves(self) -> list[tuple[str, Callable[[], None]]]:
        run = self.run
        moves: list[tuple[str, Callable[[], None]]] = [
            ("resend", self.resend),
            ("future attempt", self.future_attempt),
            ("unknown step", self.unknown_step),
            ("unknown timer", self.unknown_timer),
            ("approval out of turn", self.approval_out_of_turn),
        ]
        active = [sid for sid in run.order if run.steps[sid].status.active]
        if active:
            moves.append(("heartbeat", lambda: self.heartbeat(self.draw_from(active, "step"))))
            moves.append(("delayed report", lambda: self.delayed(self.draw_from(active, "step"))))
        stale = [
            (sid, attempt)
            for sid, last in self.dispatched.items()
            for attempt in range(1, last + 1)
            if attempt != self.active.get(sid)
        ]
        if stale:
            moves.append(("stale report", lambda: self.stale_report(stale)))
        early = [
            s.id
            for s in self.definition.steps
            if s.wait_for_signal is not None
            and run.steps[s.id].status in (StepStatus.PENDING, StepStatus.SCHEDULED)
        ]
        if early:
            moves.append(("early signal", lambda: self.early_signal(early)))
        early_timers = [t for t in sorted(run.timers) if run.timers[t].fire_at_ms > self.driver.now]
        if early_timers:
            moves.append(("timer fires early", lambda: self.fire_early(early_timers)))
        keyed = [sid for sid, key in self.awaited_key.items() if key is not None and
                 run.steps[sid].status is StepStatus.AWAITING_SIGNAL]  # fmt: skip
        if keyed:
            moves.append(("signal with another key", lambda: self.mis_correlated(keyed)))
        return moves

    def draw_from(self, options: list[T], label: str) -> T:
        return self.draw(st.sampled_from(options), label)

    def resend(self) -> None:
        self.expect_nothing_or_refusal(self.send(self.draw_from(self.resendable, "resend")))

    def heartbeat(self, sid: str) -> None:
        st_ = self.run.steps[sid]
        assert st_.last_activity_ms is not None
        moves_it = self.driver.now > st_.last_activity_ms
        events = self.driver.heartbeat(sid, st_.attempt)
        assert [type(e) for e in events] == ([ev.StepHeartbeat] if moves_it else [])

    def delayed(self, sid: str) -> None:
        """A 'started' or heartbeat issued a while ago, delivered only now."""
        st_ = self.run.steps[sid]
        assert st_.last_activity_ms is not None
        issued = max(0, self.driver.now - self.draw(st.sampled_from([1, 50, 500]), "delay"))
        base = {"command_id": self.driver.next_id(), "run_id": self.driver.run_id,
                "issued_at_ms": issued, "step_id": sid, "attempt": st_.attempt}  # fmt: skip
        if st_.status is StepStatus.DISPATCHED and self.draw(st.booleans(), "started?"):
            events = self.send(cmd.ReportTaskStarted(**base))
            assert [type(e) for e in events] == [ev.StepStarted]
        else:
            events = self.send(cmd.ReportTaskHeartbeat(**base))
            moves_it = issued > st_.last_activity_ms
            assert [type(e) for e in events] == ([ev.StepHeartbeat] if moves_it else [])
        after = self.run.steps[sid].last_activity_ms
        assert after == max(st_.last_activity_ms, issued), "the timeout moved back"

    def stale_report(self, stale: list[tuple[str, int]]) -> None:
        sid, attempt = self.draw_from(stale, "stale attempt")
        assert self.report_of_any_kind(sid, attempt) == []

    def future_attempt(self) -> None:
        sid = self.draw_from(list(self.run.order), "step")
        last = self.dispatched.get(sid, 0)
        attempt = last + self.draw(st.integers(1, 2), "ahead by")
        reason = f"step {sid!r} attempt {attempt} was never dispatched (current attempt is {last})"
        self.expect_refusal(self.report_of_any_kind(sid, attempt), reason)

    def report_of_any_kind(self, sid: str, attempt: int) -> list[ev.Event]:
        d = self.driver
        kind = self.draw(st.integers(0, 3), "report kind")
        if kind == 0:
            return d.started(sid, attempt)
        if kind == 1:
            return d.heartbeat(sid, attempt)
        if kind == 2:
            return d.succeed(sid, attempt, output={"late": True})
        return d.fail(sid, attempt, "late failure", retryable=self.draw(st.booleans(), "retry?"))

    def unknown_step(self) -> None:
        sid = "no-such-step"  # longer than any generated step id
        d = self.driver
        kind = self.draw(st.integers(0, 2), "unknown step command")
        events = (
            d.approve(sid) if kind == 0 else d.reject(sid) if kind == 1
            else self.report_of_any_kind(sid, 1)
        )  # fmt: skip
        self.expect_refusal(events, f"{self.definition.key} has no step {sid!r}")

    def fire_early(self, early: list[str]) -> None:
        """The timer service's clock is behind the one that scheduled the timer."""
        timer_id = self.draw_from(early, "timer fires early")
        events = self.driver.fire(timer_id)
        assert isinstance(events[0], ev.TimerFired) and events[0].timer_id == timer_id
        rescheduled = of_type(events, ev.TimerScheduled)
        assert timer_id not in {t.timer_id for t in rescheduled}, "a fired timer came back"

    def unknown_timer(self) -> None:
        assert self.driver.fire("no-such-timer") == []

    def approval_out_of_turn(self) -> None:
        run = self.run
        not_waiting = [
            s for s in run.order if run.steps[s].status is not StepStatus.AWAITING_APPROVAL
        ]
        if not not_waiting:
            return self.unknown_timer()
        sid = self.draw_from(not_waiting, "approval out of turn for")
        st_ = run.steps[sid]
        reason = f"step {sid!r} is not waiting for approval (it is {st_.status.value})"
        if self.draw(st.booleans(), "approve?"):
            events = self.driver.approve(sid)
            harmless = st_.approval_granted
        else:
            events = self.driver.reject(sid)
            harmless = st_.status is StepStatus.FAILED and (st_.error or "").startswith("approval ")
        if harmless:
            assert events == []
        else:
            self.expect_refusal(events, reason)
        return None

    def released_by(self, name: str, key: str | None) -> str | None:
        """The step a signal releases: the first waiting for it whose key matches."""
        for s in self.definition.steps:
            wait = s.wait_for_signal
            if wait is None or wait.name != name:
                continue
            if self.run.steps[s.id].status is StepStatus.AWAITING_SIGNAL:
                expected = self.awaited_key[s.id]
                if expected is None or key is None or expected == key:
                    return s.id
        return None

    def send_signal(self, name: str, key: str | None, payload: Any) -> str | None:
        releases = self.released_by(name, key)
        events = self.driver.signal(name, payload, key)
        received = events[0]
        assert isinstance(received, ev.SignalReceived), events
        assert received.step_id == releases, (received, releases)
        assert len(events) == 1 or releases is not None
        return releases

    def early_signal(self, early: list[str]) -> None:
        sid = self.draw_from(early, "early signal for")
        wait = self.definition.step(sid).wait_for_signal
        assert wait is not None
        key = self.draw(st.sampled_from([None, "k1", "k2"]), "signal key")
        self.send_signal(wait.name, key, {"early for": sid})

    def mis_correlated(self, keyed: list[str]) -> None:
        sid = self.draw_from(keyed, "mis-correlated signal for")
        wait = self.definition.step(sid).wait_for_signal
        assert wait is not None
        assert self.send_signal(wait.name, f"{self.awaited_key[sid]}~", None) != sid

    # -- the end -------------------------------------------------------------------------------

    def check_finished(self) -> None:
        run = self.run
        self.driver.check_fold()
        if run.status is RunStatus.COMPLETED:
            assert all(s.status in DONE for s in run.steps.values()), run.steps
            names = set(self.definition.outputs) if self.definition.outputs else None
            if names is not None:
                assert set(run.outputs) == names
        elif run.status is RunStatus.CANCELLED:
            assert self.cancel_sent
        else:
            failed = [sid for sid, s in run.steps.items() if s.status is StepStatus.FAILED]
            timed_out = run.error is not None and run.error.startswith("run timed out")
            assert failed or timed_out, run

    def after_the_end(self) -> None:
        for _ in range(self.draw(st.integers(0, 3), "commands after the end")):
            command = self.draw(st.sampled_from(self.resendable), "late command")
            self.expect_nothing_or_refusal(self.send(command))
        self.expect_nothing_or_refusal(self.driver.cancel())
        self.driver.check_fold()

    def check_replay(self) -> None:
        """The same commands, again from nothing, give the same events: no hidden input."""
        state = None
        for command, events in self.driver.sent:
            assert decide(state, command) == events, command
            state = fold(events, state)


@WORLD_SETTINGS
@given(definition=workflow_dags(max_steps=8), data=st.data())
def test_random_world_always_reaches_a_correct_terminal_state(
    definition: WorkflowDefinition, data: st.DataObject
) -> None:
    World(definition, data).play()


@WIDE_SETTINGS
@given(definition=WIDE_DEFINITIONS, data=st.data())
def test_random_world_on_any_valid_definition_reaches_a_correct_terminal_state(
    definition: WorkflowDefinition, data: st.DataObject
) -> None:
    World(definition, data).play()


# -- commands that follow no rules at all -------------------------------------------------------


COMMAND_KINDS = (
    "started", "heartbeat", "succeeded", "failed", "timer", "timer", "approve", "reject", "signal",
)  # fmt: skip
ANY_OUTPUT = st.sampled_from([None, "oops", {}, {"flag": True, "n": 1}, {"flag": "no"}])


@st.composite
def arbitrary_commands(
    draw: st.DrawFn, definition: WorkflowDefinition, pending_timers: list[str]
) -> cmd.Command:
    """Any command for run ``run-1``: steps, attempts, timers and times at random."""
    base: dict[str, Any] = {
        "command_id": draw(st.sampled_from(["c1", "c2", "c3"]) | st.integers(4, 10**6).map(str)),
        "run_id": "run-1",
        "issued_at_ms": draw(st.integers(0, 3_000)),
    }
    if draw(st.integers(0, 19)) == 0:  # rarely: they end the run or change nothing
        if draw(st.booleans()):
            return cmd.CancelRun(**base)
        return cmd.StartRun(
            **base,
            definition_name=definition.name,
            definition=definition,
            input={"flag": True, "key": "k1"},
            idempotency_key=draw(st.sampled_from(["", "idem"])),
        )
    kind = draw(st.sampled_from(COMMAND_KINDS))
    sid = draw(st.sampled_from([*(s.id for s in definition.steps), "no-such-step"]))
    attempt = draw(st.integers(0, 4))
    if kind == "started":
        return cmd.ReportTaskStarted(**base, step_id=sid, attempt=attempt)
    if kind == "heartbeat":
        return cmd.ReportTaskHeartbeat(**base, step_id=sid, attempt=attempt)
    if kind == "succeeded":
        output = draw(ANY_OUTPUT)
        return cmd.ReportTaskSucceeded(**base, step_id=sid, attempt=attempt, output=output)
    if kind == "failed":
        retryable = draw(st.booleans())
        return cmd.ReportTaskFailed(
            **base, step_id=sid, attempt=attempt, error="e", retryable=retryable
        )
    if kind == "timer":
        guessed = ["run:timeout", f"{sid}:approval", f"{sid}#{attempt}:retry"]
        timer_id = draw(st.sampled_from(pending_timers or guessed) | st.sampled_from(guessed))
        return cmd.FireTimer(**base, timer_id=timer_id)
    if kind == "approve":
        return cmd.ApproveStep(**base, step_id=sid)
    if kind == "reject":
        return cmd.RejectStep(**base, step_id=sid)
    names = [s.wait_for_signal.name for s in definition.steps if s.wait_for_signal] + ["other"]
    return cmd.SendSignal(
        **base,
        name=draw(st.sampled_from(names)),
        correlation_key=draw(st.sampled_from([None, "k1", "k2"])),
    )


@CHAOS_SETTINGS
@given(definition=workflow_dags(max_steps=5), data=st.data())
def test_decide_never_raises_and_keeps_its_invariants_on_any_command_sequence(
    definition: WorkflowDefinition, data: st.DataObject
) -> None:
    driver = RunDriver(definition)
    driver.start({"flag": True, "key": "k1"})
    accepted: list[cmd.Command] = []
    for _ in range(data.draw(st.integers(0, 40), label="commands")):
        timers = sorted(driver.run.timers)
        command = data.draw(arbitrary_commands(definition, timers), label="command")
        events = driver.send(command)  # checks seq, causation, refusals and the fold on each
        if events and not isinstance(events[0], ev.CommandRejected):
            accepted.append(command)
        if accepted and data.draw(st.booleans(), label="deliver one again"):
            again = driver.send(data.draw(st.sampled_from(accepted), label="again"))
            assert again == [] or [type(e) for e in again] == [ev.CommandRejected], again
        run = driver.run
        if run.status.finished:
            assert all(s.status.finished for s in run.steps.values())
            assert run.timers == {}
