"""The fast constructors of frozen dataclasses build what the dataclass itself builds."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from apex.domain import events as ev
from apex.domain.frozen import building, constructor
from apex.domain.state import StepState, StepStatus


def test_fast_constructor_builds_an_equal_frozen_instance_of_the_class() -> None:
    make = constructor(ev.StepDispatched)
    fields: dict[str, Any] = {
        "step_id": "a",
        "attempt": 2,
        "capability": "c",
        "input": {"x": 1},
        "timeout_ms": None,
    }
    built = make("r", 3, "cmd", "corr", 7, **fields)
    expected = ev.StepDispatched(
        run_id="r", seq=3, causation_id="cmd", correlation_id="corr", occurred_at_ms=7, **fields
    )
    assert type(built) is ev.StepDispatched
    assert built == expected
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.seq = 4  # type: ignore[misc]


def test_fast_constructor_fills_trailing_defaults_and_takes_fields_by_name() -> None:
    make = constructor(StepState)
    assert make() == StepState()
    assert make(StepStatus.RUNNING, attempt=2) == StepState(StepStatus.RUNNING, attempt=2)


def test_fast_constructor_refuses_a_class_that_needs_its_init() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("negative")

    with pytest.raises(TypeError, match="needs its __init__"):
        constructor(Checked)


def test_building_gives_statements_that_build_the_frozen_class_inline() -> None:
    values = {f.name: repr(f.default) for f in dataclasses.fields(StepState)}
    values.update(status="status", attempt="attempt + 1")
    statements, namespace = building(StepState, "step", list(values.values()))
    exec(f"def make(status, attempt):\n{statements}    return step\n", namespace)
    built = namespace["make"](StepStatus.RUNNING, 1)
    assert type(built) is StepState
    assert built == StepState(StepStatus.RUNNING, attempt=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.attempt = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="12 fields"):
        building(StepState, "step", ["status"])
