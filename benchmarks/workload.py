"""The end-to-end workload every system runs: the same DAGs, the same no-op step.

Two shapes, written once here and once per system in its own idiom:

- ``chain5``: s1 -> s2 -> s3 -> s4 -> s5.
- ``fan10``: a -> b1..b8 (fan-out) -> join (fan-in): ten steps.

Every step is :func:`hop`: it does no work, but measures the hop that brought it
here. A step returns ``{"done_at": <wall clock when it finished>, "hops": [...]}``;
the next step receives its predecessors' outputs and records ``now - done_at``
of the latest of them (for a join, the predecessor whose report released it):
the time from "a step reported done" to "the next step is running on a worker",
through everything the system does in between (report, decide, persist,
dispatch, deliver). The samples ride along in the outputs to the run's result,
so the driver collects them from the results without any side channel; the
clock is the host's wall clock, shared by every process of the benchmark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

FAN_WIDTH = 8


@dataclass(frozen=True)
class Shape:
    name: str
    title: str
    steps: int
    hops_per_run: int
    """Step-to-step samples one run yields: one per step with predecessors."""


CHAIN5 = Shape("chain5", "5-step chain", steps=5, hops_per_run=4)
FAN10 = Shape("fan10", "10-step fan-out/fan-in (1 -> 8 -> 1)", steps=10, hops_per_run=9)
SHAPES: dict[str, Shape] = {s.name: s for s in (CHAIN5, FAN10)}


def hop(after: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The no-op step: carry the predecessors' samples, add this hop's, say when done."""
    arrived = time.time()
    hops: list[float] = []
    if after:
        for output in after:
            hops.extend(output.get("hops", ()))
        hops.append(arrived - max(float(output["done_at"]) for output in after))
    return {"hops": hops, "done_at": time.time()}


def hops_of(outputs: Any) -> list[float]:
    """The step-to-step samples (seconds) found in a run's outputs, however nested."""
    found: list[float] = []
    stack = [outputs]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "hops" in item and "done_at" in item:
                found.extend(float(h) for h in item["hops"])
            else:
                stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found
