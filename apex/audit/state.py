"""A run's state at any point of its history: a fold of a prefix of its events.

The state is exactly what the orchestrator reasoned with after that event
(invariant 3: folding a run's events through ``evolve`` reproduces its state).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from apex.domain.events import Event
from apex.domain.state import RunState, fold
from apex.projections.rows import from_ms

__all__ = ["prefix", "state_at", "state_to_dict"]


def prefix(
    events: Iterable[Event], *, at_seq: int | None = None, at_time: datetime | None = None
) -> list[Event]:
    """The run's events up to and including ``at_seq`` / those that occurred by ``at_time``."""
    ordered = sorted((e for e in events if e.seq > 0), key=lambda e: e.seq)
    if at_seq is not None:
        ordered = [e for e in ordered if e.seq <= at_seq]
    if at_time is not None:
        # Times come from the commands' issuers, whose clocks may disagree, so
        # they need not grow with seq: the state at a time is the longest
        # prefix whose events all occurred by then (a fold needs a prefix).
        cut = []
        for event in ordered:
            moment = from_ms(event.occurred_at_ms)
            assert moment is not None
            if moment > at_time:
                break
            cut.append(event)
        ordered = cut
    return ordered


def state_at(
    events: Iterable[Event], *, at_seq: int | None = None, at_time: datetime | None = None
) -> RunState | None:
    """The state after the prefix; ``None`` when it is empty (before ``RunStarted``)."""
    return fold(prefix(events, at_seq=at_seq, at_time=at_time))


def state_to_dict(state: RunState) -> dict[str, Any]:
    """A JSON-ready rendering of a state (times as ISO 8601, UTC)."""
    return {
        "run_id": state.run_id,
        "definition": state.definition.key,
        "status": state.status.value,
        "seq": state.seq,
        "input": state.input,
        "outputs": state.outputs,
        "error": state.error,
        "correlation_id": state.correlation_id,
        "started_at": _iso(state.started_at_ms),
        "finished_at": _iso(state.finished_at_ms),
        "steps": {
            sid: {
                "status": st.status.value,
                "attempt": st.attempt,
                "worker_id": st.worker_id or None,
                "input": st.input,
                "output": st.output,
                "error": st.error,
                "approval_granted": st.approval_granted,
                "gate": None if st.gate is None else st.gate.value,
                "started_at": _iso(st.started_at_ms),
                "finished_at": _iso(st.finished_at_ms),
            }
            for sid in state.order
            for st in (state.steps[sid],)
        },
        "timers": {
            t.timer_id: {
                "purpose": t.purpose,
                "fire_at": _iso(t.fire_at_ms),
                "step_id": t.step_id,
                "attempt": t.attempt,
            }
            for t in state.timers.values()
        },
        "buffered_signals": [
            {"name": s.name, "payload": s.payload, "correlation_key": s.correlation_key}
            for s in state.signals
        ],
    }


def _iso(ms: int | None) -> str | None:
    moment = from_ms(ms)
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")
