"""The demo workflow end to end: orchestrator, timers and two worker processes."""

from __future__ import annotations

from apex.config import Settings
from apex.demo.runner import run_demo


async def test_ticket_triage_demo_ends_every_run_as_expected_with_two_workers(
    apex_settings: Settings,
) -> None:
    outcome = await run_demo(apex_settings, count=8, workers=2, timeout_s=150)
    assert outcome.mismatches() == []
    assert len(outcome.results) == 8
    assert outcome.steps_done == 8 * 5
    # T-0005 is "Urgent data loss": high priority, so its route waited for approval;
    # T-0007 fails classify once ("model overloaded") and is retried.
    assert outcome.approvals >= 2
    assert outcome.retries >= 1
