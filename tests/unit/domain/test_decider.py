"""The decider, one behaviour per test.

Every command goes through :class:`RunDriver`, which also checks on each one
that ``seq`` stays gapless, events name their cause, a rejection changes
nothing but ``seq``, and folding the history reproduces the state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from decider_strategies import (
    RunDriver,
    input_ref,
    kinds,
    of_type,
    output_ref,
    step,
    workflow,
)

from apex.domain import commands as cmd
from apex.domain import events as ev
from apex.domain.decider import decide_and_evolve
from apex.domain.definitions import (
    JSON,
    ApprovalGate,
    Condition,
    ConditionOp,
    FailurePolicy,
    FieldSpec,
    FieldType,
    GateWhen,
    RetryPolicy,
    SignalWait,
    StepDefinition,
    WorkflowDefinition,
)
from apex.domain.errors import DefinitionError
from apex.domain.graph import topological_order
from apex.domain.rules import backoff_ms
from apex.domain.state import FoldError, RunStatus, StepStatus

RETRY3 = RetryPolicy(max_attempts=3, initial_backoff_ms=1_000, max_backoff_ms=60_000)


def started_run(*steps: StepDefinition, input: JSON = None, **fields: Any) -> RunDriver:
    driver = RunDriver(workflow(*steps, **fields))
    driver.start(input)
    return driver


# -- starting a run ------------------------------------------------------------------------


def test_start_emits_run_started_then_dispatches_root_steps() -> None:
    driver = RunDriver(workflow(step("a", capability="summarize"), step("b", "a")))
    events = driver.start({"doc": "hello"})
    assert kinds(events) == ["RunStarted", "StepScheduled", "StepDispatched"]
    assert [e.seq for e in events] == [1, 2, 3]
    dispatched = events[2]
    assert isinstance(dispatched, ev.StepDispatched)
    assert (dispatched.step_id, dispatched.attempt, dispatched.capability) == ("a", 1, "summarize")
    assert driver.step("b").status is StepStatus.PENDING


def test_correlation_id_comes_from_the_start_command_or_defaults_to_run_id() -> None:
    driver = RunDriver(workflow(step("a")), correlation_id="")
    events = driver.start()
    assert {e.correlation_id for e in events} == {"run-1"}
    driver.correlation_id = "other"  # later commands carry another: the run keeps its own
    assert {e.correlation_id for e in driver.succeed("a")} == {"run-1"}


def test_start_with_same_idempotency_key_yields_nothing() -> None:
    driver = RunDriver(workflow(step("a")))
    driver.start(idempotency_key="order-7")
    assert driver.start(idempotency_key="order-7") == []


def test_start_with_same_command_id_yields_nothing() -> None:
    driver = RunDriver(workflow(step("a")))
    driver.start(command_id="start-1")
    assert driver.start(command_id="start-1") == []


def test_start_reusing_run_id_is_rejected() -> None:
    driver = RunDriver(workflow(step("a")))
    driver.start(idempotency_key="k1")
    [rejected] = driver.start(idempotency_key="k2")
    assert isinstance(rejected, ev.CommandRejected)
    assert rejected.seq == 4  # part of the run's history, after RunStarted..StepDispatched


def test_unknown_run_is_rejected_with_seq_zero() -> None:
    driver = RunDriver(workflow(step("a")))
    [rejected] = driver.succeed("a")
    assert isinstance(rejected, ev.CommandRejected)
    assert rejected.seq == 0
    assert driver.state is None and driver.log == []


def test_input_contract_violation_rejected() -> None:
    driver = RunDriver(workflow(step("a"), input={"doc": FieldSpec(FieldType.STRING)}))
    [rejected] = driver.start({"doc": 3})
    assert isinstance(rejected, ev.CommandRejected)
    assert rejected.seq == 0
    assert driver.state is None


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param((step("a", "b"), step("b", "a")), id="cycle"),
        pytest.param((step("a", "ghost"),), id="unknown-dependency"),
        pytest.param((step("a"), step("a")), id="duplicate-id"),
    ],
)
def test_start_with_a_definition_without_order_is_rejected(steps: tuple[StepDefinition]) -> None:
    driver = RunDriver(workflow(*steps))
    [rejected] = driver.start()
    assert isinstance(rejected, ev.CommandRejected) and rejected.seq == 0
    assert rejected.reason.startswith("workflow definition wf@1 is invalid: step 'a': ")
    assert "\n" not in rejected.reason
    assert driver.state is None


def test_run_timeout_is_scheduled_at_start() -> None:
    driver = RunDriver(workflow(step("a"), timeout_ms=5_000)).at(100)
    [timer] = of_type(driver.start(), ev.TimerScheduled)
    assert (timer.purpose, timer.fire_at_ms, timer.step_id) == ("run_timeout", 5_100, None)


def test_workflow_without_steps_completes_at_start() -> None:
    driver = RunDriver(workflow())
    assert kinds(driver.start()) == ["RunStarted", "RunCompleted"]
    assert driver.run.outputs == {}


# -- scheduling: fan-out, joins, inputs, conditions ------------------------------------------


def test_fan_out_dispatches_every_ready_step_in_one_decision() -> None:
    driver = started_run(step("a"), step("b", "a"), step("c", "a"), step("d", "a"))
    events = driver.succeed("a", output={})
    assert [e.step_id for e in of_type(events, ev.StepDispatched)] == ["b", "c", "d"]


def test_join_waits_for_every_dependency() -> None:
    driver = started_run(step("a"), step("b"), step("j", "a", "b"))
    assert of_type(driver.succeed("a"), ev.StepDispatched) == []
    assert driver.step("j").status is StepStatus.PENDING
    [dispatched] = of_type(driver.succeed("b"), ev.StepDispatched)
    assert dispatched.step_id == "j"


def test_step_input_resolves_run_input_and_upstream_outputs() -> None:
    driver = started_run(
        step("a"),
        step(
            "b",
            "a",
            inputs={
                "doc": input_ref("doc"),
                "score": output_ref("a", "score"),
                "all": output_ref("a"),
                "nested": [output_ref("a", "score"), {"k": input_ref("doc")}],
                "literal": 7,
                "missing": output_ref("a", "nope"),
            },
        ),
        input={"doc": "text"},
    )
    [dispatched] = of_type(driver.succeed("a", output={"score": 0.5}), ev.StepDispatched)
    assert dispatched.input == {
        "doc": "text",
        "score": 0.5,
        "all": {"score": 0.5},
        "nested": [0.5, {"k": "text"}],
        "literal": 7,
        "missing": None,
    }


def test_condition_false_skips_step_and_downstream_proceeds() -> None:
    when_flag = Condition(input_ref("flag"), ConditionOp.TRUTHY)
    driver = RunDriver(
        workflow(
            step("a", condition=when_flag),
            step("b", "a", inputs={"from_a": output_ref("a", "n")}),
        )
    )
    events = driver.start({"flag": False})
    assert kinds(events) == [
        "RunStarted",
        "StepScheduled",
        "StepSkipped",
        "StepScheduled",
        "StepDispatched",
    ]
    skipped = of_type(events, ev.StepSkipped)[0]
    assert skipped.step_id == "a" and "$.input.flag truthy is false" in skipped.reason
    assert of_type(events, ev.StepDispatched)[0].input == {"from_a": None}
    events = driver.succeed("b", output={"ok": True})
    assert kinds(events)[-1] == "RunCompleted"
    assert driver.run.outputs == {"b": {"ok": True}}


def test_condition_on_upstream_output_runs_step_when_true() -> None:
    high = Condition(output_ref("a", "score"), ConditionOp.GT, 0.5)
    driver = started_run(step("a"), step("b", "a", condition=high))
    [dispatched] = of_type(driver.succeed("a", output={"score": 0.9}), ev.StepDispatched)
    assert dispatched.step_id == "b"


# -- worker reports ------------------------------------------------------------------------


def test_started_report_marks_step_running_with_its_worker() -> None:
    driver = started_run(step("a"))
    [started] = driver.started("a", worker_id="w-9")
    assert isinstance(started, ev.StepStarted)
    assert driver.step("a").status is StepStatus.RUNNING
    assert driver.step("a").worker_id == "w-9"


def test_a_command_given_another_runs_state_raises_and_changes_nothing() -> None:
    driver = started_run(step("a"))
    before = driver.state
    report = cmd.ReportTaskStarted(
        command_id="started-1", run_id="run-2", issued_at_ms=5, step_id="a", attempt=1
    )
    with pytest.raises(FoldError, match="command for run run-2 given run run-1"):
        decide_and_evolve(before, report)
    assert driver.state is before and driver.step("a").status is StepStatus.DISPATCHED


def test_duplicate_result_is_ignored() -> None:
    driver = started_run(step("a"), step("b", "a"))
    report = cmd.ReportTaskSucceeded(
        command_id="result-1", run_id="run-1", issued_at_ms=5, step_id="a", attempt=1, output={}
    )
    assert kinds(driver.send(report)) == ["StepSucceeded", "StepScheduled", "StepDispatched"]
    assert driver.send(report) == []


def test_duplicate_started_report_yields_nothing() -> None:
    driver = started_run(step("a"))
    driver.started("a")
    assert driver.started("a") == []


def test_duplicate_heartbeat_yields_nothing() -> None:
    driver = started_run(step("a", timeout_ms=100))
    beat = cmd.ReportTaskHeartbeat(
        command_id="hb-1", run_id="run-1", issued_at_ms=40, step_id="a", attempt=1
    )
    assert kinds(driver.send(beat)) == ["StepHeartbeat"]
    assert driver.send(beat) == []


def test_heartbeat_overtaken_by_a_later_report_does_not_move_the_timeout_back() -> None:
    driver = started_run(step("a", timeout_ms=100))
    driver.at(50).started("a")
    assert driver.at(30).heartbeat("a") == []
    assert driver.step("a").last_activity_ms == 50


def test_started_report_delivered_after_a_heartbeat_does_not_move_the_timeout_back() -> None:
    driver = started_run(step("a", timeout_ms=100))
    beat = cmd.ReportTaskHeartbeat(
        command_id="hb-1", run_id="run-1", issued_at_ms=50, step_id="a", attempt=1
    )
    driver.send(beat)
    assert kinds(driver.at(10).started("a")) == ["StepStarted"]  # late, but news: it runs
    assert driver.step("a").last_activity_ms == 50
    assert driver.send(beat) == []  # and the heartbeat delivered again is still a repeat


def test_success_reported_before_started_is_accepted() -> None:
    driver = started_run(step("a"))
    assert kinds(driver.succeed("a", output={}))[0] == "StepSucceeded"
    assert driver.started("a") == []  # the late 'started' is stale now


def test_stale_attempt_report_yields_nothing() -> None:
    driver = started_run(step("a", retry=RETRY3))
    driver.fail("a", 1)
    driver.fire(driver.timer("retry", "a"))
    assert driver.step("a").attempt == 2
    for report in (driver.started, driver.heartbeat, driver.succeed, driver.fail):
        assert report("a", 1) == []
    assert driver.step("a").status is StepStatus.DISPATCHED


def test_attempt_from_the_future_is_rejected() -> None:
    driver = started_run(step("a"))
    [rejected] = driver.succeed("a", attempt=2)
    assert isinstance(rejected, ev.CommandRejected)
    assert rejected.reason == "step 'a' attempt 2 was never dispatched (current attempt is 1)"


def test_report_for_the_attempt_awaiting_its_retry_is_rejected() -> None:
    driver = started_run(step("a", retry=RETRY3))
    driver.fail("a", 1)
    assert driver.step("a").status is StepStatus.RETRY_WAIT
    [rejected] = driver.succeed("a", attempt=2)
    assert isinstance(rejected, ev.CommandRejected)
    assert "attempt 2 was never dispatched" in rejected.reason


# -- retries and timeouts ------------------------------------------------------------------


def test_retry_backoff_uses_timer_and_jitter_is_deterministic() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_ms=1_000, multiplier=2.0, jitter=0.5)

    def first_retry(seed: int) -> tuple[int, int]:
        driver = RunDriver(workflow(step("a", retry=policy)))
        driver.start(jitter_seed=seed)
        events = driver.at(10).fail("a", 1)
        assert kinds(events) == ["StepRetryScheduled", "TimerScheduled"]
        retry, timer = events
        assert isinstance(retry, ev.StepRetryScheduled) and isinstance(timer, ev.TimerScheduled)
        assert (retry.failed_attempt, retry.next_attempt) == (1, 2)
        assert (timer.purpose, timer.step_id, timer.attempt) == ("retry", "a", 2)
        assert timer.fire_at_ms == 10 + retry.backoff_ms
        return retry.backoff_ms, timer.fire_at_ms

    delays = {seed: first_retry(seed)[0] for seed in range(8)}
    assert all(500 <= d <= 1_000 for d in delays.values())
    assert len(set(delays.values())) > 1, "the seed draws the jitter"
    assert first_retry(3)[0] == delays[3] == backoff_ms(policy, 1, 3, "a")


def test_retry_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=4, initial_backoff_ms=100, max_backoff_ms=300)
    driver = started_run(step("a", retry=policy))
    delays = []
    for attempt in (1, 2, 3):
        [retry, _] = driver.fail("a", attempt)
        assert isinstance(retry, ev.StepRetryScheduled)
        delays.append(retry.backoff_ms)
        driver.fire(driver.timer("retry", "a"))
    assert delays == [100, 200, 300]


def test_retry_timer_dispatches_next_attempt_with_the_same_input() -> None:
    a = step("a", retry=RETRY3, inputs={"doc": input_ref("doc")})
    driver = started_run(a, input={"doc": 1})
    driver.fail("a", 1)
    events = driver.at(1_000).fire(driver.timer("retry", "a"))
    assert kinds(events) == ["TimerFired", "StepDispatched"]
    dispatched = events[1]
    assert isinstance(dispatched, ev.StepDispatched)
    assert (dispatched.attempt, dispatched.input) == (2, {"doc": 1})


def test_non_retryable_failure_fails_step_at_once() -> None:
    driver = started_run(step("a", retry=RETRY3))
    events = driver.fail("a", 1, "bad input", retryable=False)
    assert kinds(events) == ["StepFailed", "RunFailed"]
    failed = events[0]
    assert isinstance(failed, ev.StepFailed) and failed.retryable is False
    assert driver.run.error == "step 'a' failed: bad input"


def test_failure_of_the_last_attempt_fails_step() -> None:
    driver = started_run(step("a", retry=RetryPolicy(max_attempts=2)))
    driver.fail("a", 1)
    driver.fire(driver.timer("retry", "a"))
    assert kinds(driver.fail("a", 2)) == ["StepFailed", "RunFailed"]


def test_step_timeout_without_heartbeat_retries() -> None:
    driver = started_run(step("a", timeout_ms=100, retry=RETRY3))
    timer_id = driver.timer("step_timeout", "a")
    assert driver.run.timers[timer_id].fire_at_ms == 100
    events = driver.at(100).fire(timer_id)
    assert kinds(events) == ["TimerFired", "StepTimedOut", "StepRetryScheduled", "TimerScheduled"]
    assert driver.step("a").status is StepStatus.RETRY_WAIT
    assert driver.succeed("a", 1) == []  # the timed-out attempt is stale


def test_heartbeat_moves_the_timeout() -> None:
    driver = started_run(step("a", timeout_ms=100, retry=RETRY3))
    first = driver.timer("step_timeout", "a")
    assert kinds(driver.at(60).heartbeat("a")) == ["StepHeartbeat"]
    events = driver.at(100).fire(first)
    assert kinds(events) == ["TimerFired", "TimerScheduled"]
    moved = events[1]
    assert isinstance(moved, ev.TimerScheduled) and moved.fire_at_ms == 160
    assert kinds(driver.at(160).fire(moved.timer_id))[:2] == ["TimerFired", "StepTimedOut"]


def test_timeout_timer_fired_early_and_delivered_twice_yields_nothing_the_second_time() -> None:
    driver = started_run(step("a", timeout_ms=100, retry=RETRY3))
    fire = cmd.FireTimer(
        command_id="fire-1", run_id="run-1", issued_at_ms=40, timer_id="a#1:timeout@100"
    )
    assert kinds(driver.send(fire))[:2] == ["TimerFired", "StepTimedOut"]
    assert driver.send(fire) == []


def test_timeout_timer_fired_early_after_a_heartbeat_moves_to_a_new_deadline() -> None:
    driver = started_run(step("a", timeout_ms=100))
    driver.at(60).heartbeat("a")
    events = driver.at(80).fire("a#1:timeout@100")
    assert kinds(events) == ["TimerFired", "TimerScheduled"]
    assert of_type(events, ev.TimerScheduled)[0].timer_id == "a#1:timeout@160"


def test_timeout_of_last_attempt_fails_step() -> None:
    driver = started_run(step("a", timeout_ms=100))
    events = driver.at(100).fire(driver.timer("step_timeout", "a"))
    assert kinds(events) == ["TimerFired", "StepTimedOut", "StepFailed", "RunFailed"]


def test_timer_of_a_finished_attempt_yields_nothing() -> None:
    driver = started_run(step("a", timeout_ms=100), step("b"))
    timer_id = driver.timer("step_timeout", "a")
    driver.succeed("a")
    assert timer_id not in driver.run.timers
    assert driver.at(100).fire(timer_id) == []


# -- failure policies ------------------------------------------------------------------------


def test_fail_fast_cancels_pending_and_running_steps() -> None:
    driver = started_run(step("a"), step("b", "a"), step("c", "a"), step("d", "b", "c"))
    driver.succeed("a")
    driver.started("c")
    events = driver.fail("b", retryable=False)
    assert kinds(events) == ["StepFailed", "StepCancelled", "StepCancelled", "RunFailed"]
    cancelled = {e.step_id: e.was_running for e in of_type(events, ev.StepCancelled)}
    assert cancelled == {"c": True, "d": False}
    assert driver.run.status is RunStatus.FAILED
    assert driver.run.timers == {}


def test_continue_policy_finishes_independent_branches() -> None:
    driver = started_run(
        step("a"), step("b", "a"), step("c"), failure_policy=FailurePolicy.CONTINUE
    )
    events = driver.fail("a", retryable=False)
    assert kinds(events) == ["StepFailed", "StepCancelled"]
    assert of_type(events, ev.StepCancelled)[0].reason == "upstream step 'a' failed"
    assert driver.run.status is RunStatus.RUNNING
    events = driver.succeed("c", output={})
    assert kinds(events) == ["StepSucceeded", "RunFailed"]
    assert driver.run.error == "step 'a' failed: boom"


def test_continue_policy_run_error_counts_every_failed_step() -> None:
    driver = started_run(step("a"), step("b"), failure_policy=FailurePolicy.CONTINUE)
    driver.fail("a", retryable=False)
    driver.fail("b", retryable=False)
    assert driver.run.error == "step 'a' failed: boom (and 1 more)"


# -- approvals -------------------------------------------------------------------------------


def test_approval_before_gate_blocks_dispatch_until_granted() -> None:
    gate = ApprovalGate(GateWhen.BEFORE)
    driver = RunDriver(workflow(step("a", approval=gate)))
    events = driver.start()
    assert kinds(events) == ["RunStarted", "StepScheduled", "ApprovalRequested"]
    assert driver.step("a").status is StepStatus.AWAITING_APPROVAL
    assert kinds(driver.succeed("a", 1)) == ["CommandRejected"]
    assert kinds(driver.approve("a")) == ["ApprovalGranted", "StepDispatched"]


def test_approval_after_gate_holds_output() -> None:
    gate = ApprovalGate(GateWhen.AFTER)
    driver = started_run(step("a", approval=gate), step("b", "a", inputs={"v": output_ref("a")}))
    events = driver.succeed("a", output={"v": 1})
    assert kinds(events) == ["StepSucceeded", "ApprovalRequested"]
    assert driver.step("a").status is StepStatus.AWAITING_APPROVAL
    assert driver.step("b").status is StepStatus.PENDING
    events = driver.approve("a")
    assert kinds(events) == ["ApprovalGranted", "StepScheduled", "StepDispatched"]
    assert of_type(events, ev.StepDispatched)[0].input == {"v": {"v": 1}}


def test_approval_rejected_fails_step() -> None:
    driver = started_run(step("a", approval=ApprovalGate(GateWhen.BEFORE)))
    events = driver.reject("a", approver="bob", reason="too risky")
    assert kinds(events) == ["ApprovalRejected", "StepFailed", "RunFailed"]
    failed = events[1]
    assert isinstance(failed, ev.StepFailed)
    assert (failed.error, failed.retryable) == ("approval rejected by bob: too risky", False)


def test_approval_deadline_rejects() -> None:
    driver = started_run(step("a", approval=ApprovalGate(GateWhen.BEFORE, deadline_ms=1_000)))
    timer_id = driver.timer("approval_deadline", "a")
    events = driver.at(1_000).fire(timer_id)
    assert kinds(events) == ["TimerFired", "ApprovalRejected", "StepFailed", "RunFailed"]
    rejected = events[1]
    assert isinstance(rejected, ev.ApprovalRejected) and rejected.approver == "apex"
    assert driver.step("a").error == "approval deadline passed"


def test_approval_clears_its_deadline_timer() -> None:
    driver = started_run(step("a", approval=ApprovalGate(GateWhen.BEFORE, deadline_ms=1_000)))
    timer_id = driver.timer("approval_deadline", "a")
    driver.approve("a")
    assert driver.at(1_000).fire(timer_id) == []


def test_approval_gate_with_false_condition_is_not_asked() -> None:
    only_flagged = Condition(input_ref("flag"), ConditionOp.TRUTHY)
    gate = ApprovalGate(GateWhen.BEFORE, condition=only_flagged)
    driver = RunDriver(workflow(step("a", approval=gate)))
    assert kinds(driver.start({"flag": False}))[-1] == "StepDispatched"


def test_duplicate_approval_yields_nothing() -> None:
    driver = started_run(step("a", approval=ApprovalGate(GateWhen.BEFORE)))
    driver.approve("a")
    assert driver.approve("a") == []


def test_duplicate_rejection_yields_nothing() -> None:
    driver = started_run(
        step("a", approval=ApprovalGate(GateWhen.BEFORE)),
        step("b"),
        failure_policy=FailurePolicy.CONTINUE,
    )
    driver.reject("a")
    assert driver.reject("a") == []


# -- signals ---------------------------------------------------------------------------------


def test_signal_releases_the_waiting_step_and_its_payload_reaches_the_input() -> None:
    driver = RunDriver(workflow(step("a", wait_for_signal=SignalWait("go"))))
    assert kinds(driver.start())[-1] == "SignalAwaited"
    events = driver.signal("go", payload={"ok": 1})
    assert kinds(events) == ["SignalReceived", "StepDispatched"]
    assert of_type(events, ev.StepDispatched)[0].input == {"signal": {"ok": 1}}


def test_signal_before_wait_is_buffered() -> None:
    driver = started_run(step("a"), step("b", "a", wait_for_signal=SignalWait("go")))
    [buffered] = driver.signal("go", payload=42)
    assert isinstance(buffered, ev.SignalReceived) and buffered.step_id is None
    assert len(driver.run.signals) == 1
    events = driver.succeed("a")
    assert kinds(events) == ["StepSucceeded", "StepScheduled", "SignalReceived", "StepDispatched"]
    assert of_type(events, ev.SignalReceived)[0].step_id == "b"
    assert of_type(events, ev.StepDispatched)[0].input == {"signal": 42}
    assert driver.run.signals == ()


def test_signal_with_other_correlation_key_does_not_release() -> None:
    wait = SignalWait("go", correlation=input_ref("order"))
    driver = started_run(step("a", wait_for_signal=wait), input={"order": "o-1"})
    [kept] = driver.signal("go", key="o-2")
    assert isinstance(kept, ev.SignalReceived) and kept.step_id is None
    assert driver.step("a").status is StepStatus.AWAITING_SIGNAL
    assert kinds(driver.signal("go", key="o-1")) == ["SignalReceived", "StepDispatched"]


def test_signal_deadline_fails_step() -> None:
    driver = started_run(step("a", wait_for_signal=SignalWait("go", deadline_ms=2_000)))
    events = driver.at(2_000).fire(driver.timer("signal_deadline", "a"))
    assert kinds(events) == ["TimerFired", "StepFailed", "RunFailed"]
    failed = events[1]
    assert isinstance(failed, ev.StepFailed)
    assert failed.error == "signal 'go' not received by its deadline"


def test_duplicate_signal_yields_nothing_once_buffered() -> None:
    driver = started_run(step("a"), step("b", "a", wait_for_signal=SignalWait("go")))
    signal = cmd.SendSignal(command_id="sig-1", run_id="run-1", issued_at_ms=1, name="go")
    assert kinds(driver.send(signal)) == ["SignalReceived"]
    assert driver.send(signal) == []
    assert len(driver.run.signals) == 1


def test_duplicate_signal_yields_nothing_once_it_released_a_step() -> None:
    wait = SignalWait("go")
    driver = started_run(step("a", wait_for_signal=wait), step("b", "a", wait_for_signal=wait))
    signal = cmd.SendSignal(command_id="sig-1", run_id="run-1", issued_at_ms=1, name="go")
    assert kinds(driver.send(signal)) == ["SignalReceived", "StepDispatched"]
    assert driver.send(signal) == []  # it must not be kept for 'b'
    assert driver.run.signals == ()


# -- cancellation, run timeout, contracts, outputs --------------------------------------------


def test_cancel_run_cancels_pending_and_tells_running() -> None:
    driver = started_run(step("a"), step("b"), step("c", "a", "b"))
    driver.started("b")
    events = driver.cancel("operator asked")
    assert kinds(events) == ["StepCancelled"] * 3 + ["RunCancelled"]
    cancelled = {e.step_id: e.was_running for e in of_type(events, ev.StepCancelled)}
    assert cancelled == {"a": True, "b": True, "c": False}
    assert {e.reason for e in of_type(events, ev.StepCancelled)} == {"operator asked"}
    assert driver.run.status is RunStatus.CANCELLED


def test_cancel_of_a_cancelled_run_yields_nothing() -> None:
    driver = started_run(step("a"))
    driver.cancel()
    assert driver.cancel() == []


def test_run_timeout_fails_run() -> None:
    driver = started_run(step("a"), step("b", "a"), timeout_ms=5_000)
    events = driver.at(5_000).fire(driver.timer("run_timeout"))
    assert kinds(events) == ["TimerFired", "StepCancelled", "StepCancelled", "RunFailed"]
    failed = events[-1]
    assert isinstance(failed, ev.RunFailed)
    assert (failed.error, failed.step_id) == ("run timed out after 5000 ms", None)
    assert driver.run.timers == {}


def test_output_contract_violation_fails_step() -> None:
    contract = {"label": FieldSpec(FieldType.STRING)}
    driver = started_run(step("a", output=contract, retry=RETRY3))
    events = driver.succeed("a", output={"label": 3})
    assert kinds(events) == ["StepFailed", "RunFailed"]
    failed = events[0]
    assert isinstance(failed, ev.StepFailed) and failed.retryable is False
    assert failed.error == (
        "output breaks the step's output contract: field 'label' should be string, got integer"
    )


def test_output_matching_the_contract_succeeds() -> None:
    contract = {"label": FieldSpec(FieldType.STRING), "n": FieldSpec(required=False)}
    driver = started_run(step("a", output=contract))
    assert kinds(driver.succeed("a", output={"label": "x"}))[0] == "StepSucceeded"


def test_run_outputs_default_to_sinks() -> None:
    driver = started_run(step("a"), step("b", "a"), step("c", "a"))
    driver.succeed("a", output={"mid": 1})
    driver.succeed("b", output={"b": 2})
    events = driver.succeed("c", output={"c": 3})
    completed = events[-1]
    assert isinstance(completed, ev.RunCompleted)
    assert completed.outputs == {"b": {"b": 2}, "c": {"c": 3}}
    assert driver.run.status is RunStatus.COMPLETED


def test_run_outputs_follow_the_definition_references() -> None:
    outputs = {"score": output_ref("a", "score"), "doc": input_ref("doc")}
    driver = started_run(step("a"), step("b", "a"), outputs=outputs, input={"doc": "d"})
    driver.succeed("a", output={"score": 9})
    driver.succeed("b", output={})
    assert driver.run.outputs == {"score": 9, "doc": "d"}


# -- commands on finished runs -------------------------------------------------------------


@pytest.mark.parametrize("report", ["started", "heartbeat", "succeed", "fail"])
def test_worker_report_on_a_finished_run_yields_nothing(report: str) -> None:
    driver = started_run(step("a"), step("b"))
    driver.cancel()
    assert getattr(driver, report)("a", 1) == []


def test_timer_on_a_finished_run_yields_nothing() -> None:
    driver = started_run(step("a", timeout_ms=100))
    timer_id = driver.timer("step_timeout", "a")
    driver.cancel()
    assert driver.at(100).fire(timer_id) == []


# -- every refusal, with its message --------------------------------------------------------

Action = Callable[[RunDriver], list[ev.Event]]
GATED = workflow(
    step("a", approval=ApprovalGate(GateWhen.BEFORE)),
    step("b", retry=RETRY3),
    step("w", "b", wait_for_signal=SignalWait("go")),
    input={"doc": FieldSpec(FieldType.STRING, required=False)},
)
CYCLIC = workflow(step("a", "b"), step("b", "a"))


def _order_problems(definition: WorkflowDefinition) -> str:
    """What validation says about a definition without order (its wording is its own)."""
    with pytest.raises(DefinitionError) as refused:
        topological_order(definition)
    return "; ".join(map(str, refused.value.problems))


def _completed(d: RunDriver) -> None:
    d.start()
    d.approve("a")
    d.succeed("a")
    d.succeed("b")
    d.signal("go")
    d.succeed("w")
    assert d.run.status is RunStatus.COMPLETED


def _started(d: RunDriver) -> None:
    d.start()


def _failed(d: RunDriver) -> None:
    d.start()
    d.fail("b", retryable=False)


def _cancelled(d: RunDriver) -> None:
    d.start()
    d.cancel()


def _signal_taken(d: RunDriver) -> None:
    d.start()
    d.succeed("b")
    d.signal("go")
    assert d.step("w").status is StepStatus.DISPATCHED


def _retry_waiting(d: RunDriver) -> None:
    d.start()
    d.fail("b", 1)


def _nothing(d: RunDriver) -> None:
    return None


REFUSALS = [
    # (id, setup, action, reason, in the run's history)
    ("unknown-run-report", _nothing, lambda d: d.succeed("a"), "unknown run 'run-1'", False),
    ("unknown-run-cancel", _nothing, lambda d: d.cancel(), "unknown run 'run-1'", False),
    ("unknown-run-timer", _nothing, lambda d: d.fire("t"), "unknown run 'run-1'", False),
    ("unknown-run-signal", _nothing, lambda d: d.signal("go"), "unknown run 'run-1'", False),
    ("unknown-run-approve", _nothing, lambda d: d.approve("a"), "unknown run 'run-1'", False),
    (
        "unknown-definition",
        _nothing,
        lambda d: d.start(definition=None),
        "unknown workflow definition missing@latest",
        False,
    ),
    (
        "invalid-definition",
        _nothing,
        lambda d: d.start(definition=CYCLIC),
        "workflow definition wf@1 is invalid: " + _order_problems(CYCLIC),
        False,
    ),
    (
        "input-contract-type",
        _nothing,
        lambda d: d.start({"doc": 1}),
        "input does not match wf@1's input contract: field 'doc' should be string, got integer",
        False,
    ),
    (
        "input-contract-shape",
        _nothing,
        lambda d: d.start([1]),
        "input does not match wf@1's input contract: expected an object with fields ['doc'],"
        " got array",
        False,
    ),
    (
        "run-id-reused",
        _started,
        lambda d: d.start(idempotency_key="other"),
        "run 'run-1' already exists (started by command 'cmd-1' with another idempotency key)",
        True,
    ),
    (
        "cancel-completed",
        _completed,
        lambda d: d.cancel(),
        "run 'run-1' is already completed",
        True,
    ),
    (
        "signal-completed",
        _completed,
        lambda d: d.signal("go"),
        "run 'run-1' is already completed",
        True,
    ),
    (
        "approve-completed",
        _completed,
        lambda d: d.approve("a"),
        "run 'run-1' is already completed",
        True,
    ),
    (
        "reject-completed",
        _completed,
        lambda d: d.reject("a"),
        "run 'run-1' is already completed",
        True,
    ),
    ("cancel-failed", _failed, lambda d: d.cancel(), "run 'run-1' is already failed", True),
    (
        "approve-cancelled",
        _cancelled,
        lambda d: d.approve("a"),
        "run 'run-1' is already cancelled",
        True,
    ),
    (
        "signal-nobody-waits-for",
        _started,
        lambda d: d.signal("stop"),
        "no step of wf@1 waits for signal 'stop'",
        True,
    ),
    (
        "signal-past-its-wait",
        _signal_taken,
        lambda d: d.signal("go"),
        "every step waiting for signal 'go' is past its wait",
        True,
    ),
    ("approve-unknown-step", _started, lambda d: d.approve("zz"), "wf@1 has no step 'zz'", True),
    ("reject-unknown-step", _started, lambda d: d.reject("zz"), "wf@1 has no step 'zz'", True),
    ("report-unknown-step", _started, lambda d: d.succeed("zz"), "wf@1 has no step 'zz'", True),
    (
        "heartbeat-unknown-step",
        _started,
        lambda d: d.heartbeat("zz"),
        "wf@1 has no step 'zz'",
        True,
    ),
    (
        "approve-not-waiting",
        _started,
        lambda d: d.approve("b"),
        "step 'b' is not waiting for approval (it is dispatched)",
        True,
    ),
    (
        "reject-not-waiting",
        _started,
        lambda d: d.reject("w"),
        "step 'w' is not waiting for approval (it is pending)",
        True,
    ),
    (
        "attempt-from-the-future",
        _started,
        lambda d: d.started("b", 2),
        "step 'b' attempt 2 was never dispatched (current attempt is 1)",
        True,
    ),
    (
        "attempt-never-dispatched",
        _started,
        lambda d: d.succeed("w", 1),
        "step 'w' attempt 1 was never dispatched (current attempt is 0)",
        True,
    ),
    (
        "attempt-awaiting-retry",
        _retry_waiting,
        lambda d: d.fail("b", 2),
        "step 'b' attempt 2 was never dispatched (current attempt is 1)",
        True,
    ),
]


@pytest.mark.parametrize(
    ("setup", "action", "reason", "in_history"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSALS],
)
def test_refusal_names_the_reason(
    setup: Callable[[RunDriver], None], action: Action, reason: str, in_history: bool
) -> None:
    driver = RunDriver(GATED)
    setup(driver)
    before = driver.state
    [rejected] = action(driver)
    assert isinstance(rejected, ev.CommandRejected)
    assert rejected.reason == reason
    if in_history:
        assert before is not None and rejected.seq == before.seq + 1
    else:
        assert rejected.seq == 0 and driver.state is None
